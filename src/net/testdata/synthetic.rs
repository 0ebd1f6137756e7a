// Shared by the network tests and the firewall example through `include!`.

/// Returns a definition with `count` services spread over the five default
/// segments and a larger one, each allowed to reach the next three, with
/// every egress kind and one published port.
#[allow(dead_code)]
fn synthetic_definition(count: usize) -> String {
    let mut text = String::from(
        "[image]\nname = \"synthetic\"\nversion = \"1.0\"\n\n\
         [network]\ninterface = \"up0\"\n\n\
         [vpn]\nendpoint = \"192.0.2.1:51820\"\n\
         public_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n\
         private_key_file = \"/data/config/wireguard/vpn.key\"\n\
         addresses = [\"10.64.12.3/32\"]\ndns = [\"10.64.0.1\"]\n\n",
    );
    for (name, subnet) in [
        ("frontend", "10.80.1.0/24"),
        ("backend", "10.80.2.0/24"),
        ("download", "10.80.3.0/24"),
        ("monitoring", "10.80.4.0/24"),
        ("database", "10.80.5.0/24"),
        ("bulk", "10.81.0.0/20"),
    ] {
        text += &format!("[[segment]]\nname = \"{name}\"\nsubnet = \"{subnet}\"\n\n");
    }
    let segments = ["frontend", "backend", "download", "monitoring", "database", "bulk"];
    let egress = ["none", "internet", "vpn"];
    for index in 0..count {
        let publish = if index == 0 { ", publish = 443" } else { "" };
        let egress = if index == 0 { "none" } else { egress[index % 3] };
        let allow: Vec<String> = (1..=3)
            .map(|step| (index + step) % count)
            .filter(|&target| target != index)
            .map(|target| format!("\"s{target:03}:{}/tcp\"", 8000 + target % 100))
            .collect();
        text += &format!(
            "[[service]]\nname = \"s{index:03}\"\nsegment = \"{}\"\ncommand = [\"/bin/true\"]\n\
             egress = \"{egress}\"\nports = [{{ port = {}{publish} }}]\nallow = [{}]\n\n",
            segments[index % segments.len()],
            8000 + index % 100,
            allow.join(", "),
        );
    }
    text
}
