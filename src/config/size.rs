//! Byte sizes written as `64M`, `1G` or a plain number of bytes.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes. Suffixes K, M, G and T are powers of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `512`, `64K`, `64M`, `1G` or `1T` (an optional `iB` or `B`
    /// after the suffix is accepted).
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, suffix) = trimmed.split_at(digits_end);
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {text:?}: expected a number such as 512M or 2G"))?;
        let shift = match suffix.trim_end_matches("iB").trim_end_matches('B') {
            "" => 0,
            "K" | "k" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(format!("invalid size suffix in {text:?}: use K, M, G or T")),
        };
        number
            .checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} does not fit in 64 bits"))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 >= 1 << shift && self.0 % (1 << shift) == 0 {
                return write!(f, "{}{suffix}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512M\" or a number of bytes")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
                u64::try_from(value)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {value}: a size cannot be negative")))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
                ByteSize::parse(value).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_suffixes() {
        assert_eq!(ByteSize::parse("512").unwrap().bytes(), 512);
        assert_eq!(ByteSize::parse("64K").unwrap().bytes(), 64 << 10);
        assert_eq!(ByteSize::parse("64M").unwrap().bytes(), 64 << 20);
        assert_eq!(ByteSize::parse("2GiB").unwrap().bytes(), 2 << 30);
    }

    #[test]
    fn parse_rejects_unknown_suffix() {
        let error = ByteSize::parse("12X").unwrap_err();
        assert!(error.contains("12X"), "{error}");
    }

    #[test]
    fn display_round_trips() {
        for text in ["128M", "1G", "1000"] {
            assert_eq!(ByteSize::parse(text).unwrap().to_string(), text);
        }
    }
}
