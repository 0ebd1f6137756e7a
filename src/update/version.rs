//! Version ordering for updates: dotted versions compare part by part,
//! numbers as numbers, so 1.10.0 is newer than 1.9.3.

use std::cmp::Ordering;

/// Compares two versions part by part, splitting at `.`, `-`, `+` and `~`.
/// Two numeric parts compare as numbers and other parts as text. When all
/// shared parts are equal, the version with more parts is newer.
pub fn compare(left: &str, right: &str) -> Ordering {
    let split = |text: &str| -> Vec<String> {
        text.split(['.', '-', '+', '~']).map(str::to_string).collect()
    };
    let (left, right) = (split(left), split(right));
    for (a, b) in left.iter().zip(&right) {
        let order = match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    left.len().cmp(&right.len())
}

/// Returns true when `offered` may replace `current`: it is newer, or
/// `allow_downgrade` is set.
pub fn accepts(current: &str, offered: &str, allow_downgrade: bool) -> bool {
    allow_downgrade || compare(offered, current) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_parts_compare_as_numbers() {
        assert_eq!(compare("1.10.0", "1.9.3"), Ordering::Greater);
        assert_eq!(compare("2.0", "2.0"), Ordering::Equal);
        assert_eq!(compare("2.0", "2.0.1"), Ordering::Less);
    }

    #[test]
    fn same_or_older_version_rejected() {
        assert!(!accepts("1.2.0", "1.2.0", false));
        assert!(!accepts("1.2.0", "1.1.9", false));
        assert!(accepts("1.2.0", "1.1.9", true));
        assert!(accepts("1.2.0", "1.2.1", false));
    }
}
