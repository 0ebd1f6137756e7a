//! Service output: bytes from a child's stdout and stderr pipe split into
//! lines, and the last lines of each service kept for crash reports.

use std::collections::VecDeque;

/// Maximum line length, in bytes. A longer run of bytes without a newline
/// is split.
pub const MAX_LINE: usize = 4096;
/// Lines kept per service for crash reports.
pub const TAIL_LINES: usize = 20;

/// Bytes of a pipe that do not end in a newline yet.
#[derive(Debug, Default)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Appends `bytes` and returns the lines they complete, without the
    /// newline and with invalid UTF-8 replaced.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                lines.push(self.take());
                continue;
            }
            self.partial.push(byte);
            if self.partial.len() >= MAX_LINE {
                lines.push(self.take());
            }
        }
        lines
    }

    /// Returns the unterminated rest at end of file, if any.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let bytes = std::mem::take(&mut self.partial);
        let line = String::from_utf8_lossy(&bytes);
        line.strip_suffix('\r').unwrap_or(&line).to_string()
    }
}

/// The last [`TAIL_LINES`] lines of a service.
#[derive(Debug, Default, Clone)]
pub struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    pub fn push(&mut self, line: String) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_splits_lines_across_reads() {
        let mut buffer = LineBuffer::default();
        assert_eq!(buffer.push(b"hel"), Vec::<String>::new());
        assert_eq!(buffer.push(b"lo\nwor"), ["hello"]);
        assert_eq!(buffer.push(b"ld\r\n\n"), ["world", ""]);
    }

    #[test]
    fn finish_returns_unterminated_rest() {
        let mut buffer = LineBuffer::default();
        buffer.push(b"a\nb");
        assert_eq!(buffer.finish().as_deref(), Some("b"));
        assert_eq!(buffer.finish(), None);
    }

    #[test]
    fn long_line_is_split() {
        let mut buffer = LineBuffer::default();
        let lines = buffer.push(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(buffer.finish().unwrap().len(), 10);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut buffer = LineBuffer::default();
        assert_eq!(buffer.push(b"a\xffb\n"), ["a\u{fffd}b"]);
    }

    #[test]
    fn tail_keeps_last_lines() {
        let mut tail = Tail::default();
        for index in 0..25 {
            tail.push(index.to_string());
        }
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "5");
        assert_eq!(lines[TAIL_LINES - 1], "24");
    }
}
