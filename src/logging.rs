//! The log: one line per event on standard error (the journal under systemd), and nothing a
//! peer sends can forge a line or reach the terminal.
//!
//! Calling AE titles, UIDs, error comments and parser messages quote bytes from the wire; any of
//! them may hold a newline, an escape sequence or a bell. Rather than trust every log site to
//! escape what it prints, the writer escapes every control character of each formatted event
//! (tracing's fmt layer writes an event in one call), keeping only the final newline and tabs.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber: `RUST_LOG` or the default filter, escaped output.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,ort=warn,jpeg2k=warn".into()),
        )
        .with_writer(EscapedStderr)
        // colours are escape sequences too: off, so that every one in the output is escaped
        .with_ansi(false)
        .init();
}

/// Standard error, with control characters escaped.
#[derive(Debug, Clone, Copy)]
pub struct EscapedStderr;

impl<'a> MakeWriter<'a> for EscapedStderr {
    type Writer = Escaping<io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        Escaping(io::stderr())
    }
}

/// Writes each buffer with its control characters escaped as `\xNN` (C0, DEL, C1), except a
/// newline at its very end and tabs.
pub struct Escaping<W>(pub W);

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, newline) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (&*text, ""),
        };
        self.0.write_all(escape_controls(body).as_bytes())?;
        self.0.write_all(newline.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A peer's bytes as the node repeats them (in a log line, an error kept in the database, a
/// command's output): decoded lossily (invalid UTF-8 becomes U+FFFD), controls escaped, and cut
/// to `max_chars` characters with an ellipsis.
pub fn peer_text(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let escaped = escape_controls(&text);
    match escaped.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped.into_owned(),
    }
}

/// `text` with every control character but tab written as `\xNN` (or `\u{NN}` above 0xFF).
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            c if c.is_control() && (c as u32) <= 0xFF => out.push_str(&format!("\\x{:02X}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{{{:X}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_lines_and_terminal_escapes_are_escaped() {
        let mut out = Escaping(Vec::new());
        out.write_all(b"peer_ae=EVIL\n2026-11-28 INFO forged\x1b[2J\x07\tok\n").unwrap();
        assert_eq!(String::from_utf8(out.0).unwrap(), "peer_ae=EVIL\\x0A2026-11-28 INFO forged\\x1B[2J\\x07\tok\n");
        assert_eq!(escape_controls("plain"), "plain");
    }

    #[test]
    fn peer_bytes_are_repeated_as_valid_escaped_text() {
        assert_eq!(peer_text(b"MSA|\xff\xfeAA\x00|1\r", 100), "MSA|\u{FFFD}\u{FFFD}AA\\x00|1\\x0D");
        assert_eq!(peer_text("ab\u{e9}cd".as_bytes(), 3), "ab\u{e9}…");
    }
}
