//! Accounts for service users. Services run as numeric `UID:GID` (1000:1000
//! by default), and some programs refuse to start when their user has no
//! name: PostgreSQL's `initdb` and `postgres` look it up with getpwuid.
//! The builder adds a `/etc/passwd` and `/etc/group` entry for every
//! service user that the Debian base does not already name, so the same
//! number always has the same name in every build.

use std::collections::BTreeSet;
use std::path::Path;

use super::tree;
use super::BuildError;
use crate::config::parse_user;
use crate::config::Loaded;

/// Lines to append to `/etc/passwd` and `/etc/group` so that every user
/// and group in `users` has an entry. Existing entries are kept as they are.
pub fn missing_entries(passwd: &str, group: &str, users: &BTreeSet<(u32, u32)>) -> (String, String) {
    let known = |table: &str| -> BTreeSet<u32> {
        table
            .lines()
            .filter_map(|line| line.split(':').nth(2))
            .filter_map(|id| id.parse().ok())
            .collect()
    };
    let mut known_users = known(passwd);
    let mut known_groups = known(group);

    let mut passwd_lines = String::new();
    let mut group_lines = String::new();
    for &(uid, gid) in users {
        if known_groups.insert(gid) {
            group_lines.push_str(&format!("ztms-{gid}:x:{gid}:\n"));
        }
        if known_users.insert(uid) {
            passwd_lines.push_str(&format!("ztms-{uid}:x:{uid}:{gid}:ztms service:/nonexistent:/usr/sbin/nologin\n"));
        }
    }
    (passwd_lines, group_lines)
}

/// Adds the missing service accounts to the tree's `/etc/passwd` and
/// `/etc/group`, replacing the files rather than writing through them,
/// because the tree shares its files with the base cache.
pub fn add_service_accounts(loaded: &Loaded, tree_dir: &Path) -> Result<(), BuildError> {
    let users: BTreeSet<(u32, u32)> = loaded
        .definition
        .services
        .iter()
        .filter(|service| service.oci.is_none())
        .filter_map(|service| parse_user(&service.user).ok())
        .filter(|&(uid, _)| uid != 0)
        .collect();
    if users.is_empty() {
        return Ok(());
    }

    let read = |relative: &str| {
        let path = tree_dir.join(relative);
        std::fs::read_to_string(&path).map_err(|e| BuildError::io("read account table", &path, e))
    };
    let passwd = read("etc/passwd")?;
    let group = read("etc/group")?;
    let (passwd_add, group_add) = missing_entries(&passwd, &group, &users);
    if !passwd_add.is_empty() {
        tree::write_file(tree_dir, "etc/passwd", format!("{passwd}{passwd_add}").as_bytes(), 0o644)?;
    }
    if !group_add.is_empty() {
        tree::write_file(tree_dir, "etc/group", format!("{group}{group_add}").as_bytes(), 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\npostgres:x:104:110::/var/lib/postgresql:/bin/bash\n";
    const GROUP: &str = "root:x:0:\npostgres:x:110:\n";

    #[test]
    fn service_user_without_entry_gets_one() {
        let users = BTreeSet::from([(1000, 1000)]);
        let (passwd, group) = missing_entries(PASSWD, GROUP, &users);
        assert_eq!(passwd, "ztms-1000:x:1000:1000:ztms service:/nonexistent:/usr/sbin/nologin\n");
        assert_eq!(group, "ztms-1000:x:1000:\n");
    }

    #[test]
    fn existing_entries_are_kept() {
        let users = BTreeSet::from([(104, 110)]);
        assert_eq!(missing_entries(PASSWD, GROUP, &users), (String::new(), String::new()));
    }

    #[test]
    fn shared_group_is_added_once() {
        let users = BTreeSet::from([(1000, 1000), (1001, 1000)]);
        let (passwd, group) = missing_entries(PASSWD, GROUP, &users);
        assert_eq!(passwd.lines().count(), 2);
        assert_eq!(group.lines().count(), 1);
    }
}
