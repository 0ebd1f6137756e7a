//! The `/etc/hosts` of the root filesystem: every service's name with its
//! planned address, so that a service's configuration names the services
//! it talks to (`postgres:5432`) rather than addresses. The addresses are
//! fixed when `ztms build` plans the network, so the file is written into
//! the image and needs no resolver at run time.

use super::NetworkPlan;

/// Path of the hosts file in the root filesystem.
pub const HOSTS_PATH: &str = "/etc/hosts";

/// Renders the hosts file: loopback, then one line per service in the
/// plan's order (sorted by name).
pub fn render(plan: &NetworkPlan) -> String {
    let mut text = String::from("# Written by ztms build from the network plan.\n127.0.0.1\tlocalhost\n");
    for service in &plan.services {
        text.push_str(&format!("{}\t{}\n", service.address, service.name));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn plan(text: &str) -> NetworkPlan {
        let loaded = crate::config::parse(Path::new("hosts.toml"), text.to_string()).expect("valid definition");
        NetworkPlan::from_definition(&loaded.definition).expect("valid network")
    }

    #[test]
    fn hosts_file_names_every_service_with_its_address() {
        let plan = plan(
            r#"
            [image]
            name = "hosts"
            version = "1"
            [[service]]
            name = "proxy"
            segment = "frontend"
            command = ["/bin/true"]
            [[service]]
            name = "postgres"
            segment = "database"
            command = ["/bin/true"]
            "#,
        );
        let text = render(&plan);
        for service in &plan.services {
            assert!(text.contains(&format!("{}\t{}\n", service.address, service.name)), "{text}");
        }
    }

    #[test]
    fn hosts_file_keeps_localhost() {
        let plan = plan("[image]\nname = \"hosts\"\nversion = \"1\"\n");
        assert!(render(&plan).contains("127.0.0.1\tlocalhost\n"));
    }
}
