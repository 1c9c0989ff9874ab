//! HL7 v2 over MLLP (HL7 v2.5.1 Appendix C), over TCP or TLS: one framed message sent, one framed
//! reply read within its bound and deadline, and the receiver's ACK deciding the outcome.
//!
//! Blocking (the sender runs it on `spawn_blocking`); its failures are [`MessageError`]s:
//! everything that may succeed later is transient, only the receiver's AR/CR is permanent.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::MessageError;
use crate::messages::hl7::unescape;

/// MLLP's start block (VT).
const START_BLOCK: u8 = 0x0B;
/// MLLP's end block (FS) and the carriage return after it.
const END_BLOCK: [u8; 2] = [0x1C, 0x0D];
/// The largest ACK read: an acknowledgment is a few hundred bytes; this bounds a peer that
/// never stops sending.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// `message` in an MLLP frame: VT, the message, FS, CR.
pub fn frame(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(&END_BLOCK);
    out
}

/// Why no reply was read, or no message sent.
#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("invalid TLS server name {name:?}: {source}")]
    ServerName { name: String, source: rustls_pki_types::InvalidDnsNameError },
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    #[error("sending: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading the acknowledgment: {0}")]
    Read(#[source] std::io::Error),
    #[error("no acknowledgment within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before a whole acknowledgment arrived")]
    Closed,
    #[error("acknowledgment larger than {0} bytes")]
    TooLarge(usize),
}

/// Reads one MLLP frame from `reader` and returns its content: bytes before the start block are
/// skipped (some peers send a newline first), anything after the end block is ignored. At most
/// `limit` bytes of content; a read timeout on the underlying socket surfaces as an
/// `io::ErrorKind::WouldBlock`/`TimedOut` error.
pub fn read_frame(reader: &mut impl Read, limit: usize) -> Result<Vec<u8>, MllpError> {
    let mut content: Option<Vec<u8>> = None;
    let mut chunk = [0u8; 4096];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Err(MllpError::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(MllpError::Read(e)),
        };
        let mut bytes = &chunk[..n];
        if content.is_none() {
            let Some(start) = bytes.iter().position(|b| *b == START_BLOCK) else { continue };
            bytes = &bytes[start + 1..];
            content = Some(Vec::new());
        }
        let Some(body) = content.as_mut() else { continue };
        // Search from one byte back: FS may have ended the previous chunk.
        let from = body.len().saturating_sub(1);
        body.extend_from_slice(bytes);
        if let Some(end) = body[from..].windows(2).position(|w| w == END_BLOCK) {
            body.truncate(from + end);
            return Ok(std::mem::take(body));
        }
        if body.len() > limit {
            return Err(MllpError::TooLarge(limit));
        }
    }
}

/// Where an `hl7` destination listens.
#[derive(Debug, Clone)]
pub struct Hl7Target {
    pub host: String,
    pub port: u16,
    /// With `[destinations.tls]`: the client configuration (`tls::client_config`) and the
    /// name the server's certificate must carry.
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
    /// For connecting, and then for sending and reading the whole acknowledgment.
    pub timeout: Duration,
}

/// The connection to a receiver, plain or TLS; the TCP socket stays reachable for its timeouts.
enum Connection {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Connection {
    fn tcp(&self) -> &TcpStream {
        match self {
            Connection::Plain(tcp) => tcp,
            Connection::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Plain(tcp) => tcp.read(buf),
            Connection::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Plain(tcp) => tcp.write(buf),
            Connection::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Plain(tcp) => tcp.flush(),
            Connection::Tls(tls) => tls.flush(),
        }
    }
}

/// Sends `message` to `target` and classifies its acknowledgment ([`parse_ack`]); `control_id`
/// is the message's MSH-10. Blocking: run it on `spawn_blocking`. Connection failures,
/// timeouts and unreadable replies are transient.
pub fn send(target: &Hl7Target, message: &str, control_id: &str) -> Result<(), MessageError> {
    let transient = |e: MllpError| MessageError::Transient(format!("{}:{}: {e}", target.host, target.port));
    let reply = exchange(target, message).map_err(transient)?;
    parse_ack(&String::from_utf8_lossy(&reply), control_id)
}

/// Connects, writes the framed message and reads one framed reply, all within the target's
/// timeout (connecting has its own).
fn exchange(target: &Hl7Target, message: &str) -> Result<Vec<u8>, MllpError> {
    let mut connection = connect(target)?;
    let deadline = Instant::now() + target.timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(MllpError::Timeout(target.timeout))
    };
    // the write runs the TLS handshake, which reads the server's answer: bounded too
    connection.tcp().set_write_timeout(Some(remaining()?)).map_err(MllpError::Write)?;
    connection.tcp().set_read_timeout(Some(remaining()?)).map_err(MllpError::Write)?;
    connection
        .write_all(&frame(message))
        .and_then(|()| connection.flush())
        .map_err(|e| timed_out(e, target, MllpError::Write))?;
    // The read timeout bounds each read; the deadline bounds them all (a peer that trickles
    // one byte at a time does not keep us forever).
    let mut reader = DeadlineReader { connection: &mut connection, deadline };
    read_frame(&mut reader, MAX_REPLY_BYTES).map_err(|e| match e {
        MllpError::Read(io) => timed_out(io, target, MllpError::Read),
        other => other,
    })
}

/// `Timeout` for an I/O error that is one, else `other`.
fn timed_out(e: std::io::Error, target: &Hl7Target, other: fn(std::io::Error) -> MllpError) -> MllpError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => MllpError::Timeout(target.timeout),
        _ => other(e),
    }
}

/// Reads from a connection with each read's timeout set to what is left before the deadline.
struct DeadlineReader<'a> {
    connection: &'a mut Connection,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
        let Some(left) = left else { return Err(std::io::ErrorKind::TimedOut.into()) };
        self.connection.tcp().set_read_timeout(Some(left))?;
        self.connection.read(buf)
    }
}

/// A TCP connection to the first of the target's addresses that answers, within the timeout,
/// with TLS on top when configured (the handshake happens with the first write).
fn connect(target: &Hl7Target) -> Result<Connection, MllpError> {
    let addresses = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|_| MllpError::Resolve(format!("{}:{}", target.host, target.port)))?;
    let mut last = None;
    let mut tcp = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, target.timeout) {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = match (tcp, last) {
        (Some(tcp), _) => tcp,
        (None, Some(e)) => return Err(MllpError::Connect(e)),
        (None, None) => return Err(MllpError::Resolve(format!("{}:{}", target.host, target.port))),
    };
    // Small messages, one round trip: do not wait to coalesce.
    tcp.set_nodelay(true).map_err(MllpError::Connect)?;
    let Some((config, name)) = &target.tls else { return Ok(Connection::Plain(tcp)) };
    let server_name = rustls_pki_types::ServerName::try_from(name.clone())
        .map_err(|source| MllpError::ServerName { name: name.clone(), source })?;
    let session = rustls::ClientConnection::new(config.clone(), server_name).map_err(MllpError::Tls)?;
    Ok(Connection::Tls(Box::new(rustls::StreamOwned::new(session, tcp))))
}

/// What the receiver's ACK says about the message with MSH-10 `control_id`: AA/CA delivered;
/// AE/CE transient (the receiver may accept it later); AR/CR permanent. A reply without an MSA,
/// with an unknown code, or acknowledging another control ID is transient; except that an
/// AR/CR with an empty MSA-2 is permanent (a receiver that cannot read our message cannot echo
/// its control ID either).
pub fn parse_ack(reply: &str, control_id: &str) -> Result<(), MessageError> {
    let fields = |name: &str| -> Option<Vec<&str>> {
        reply
            .split(['\r', '\n'])
            .map(|s| s.trim_start_matches(char::from(START_BLOCK)))
            .find(|s| s.starts_with(name) && s[name.len()..].starts_with('|'))
            .map(|s| s.split('|').collect())
    };
    let field = |segment: &Option<Vec<&str>>, n: usize| -> String {
        segment.as_ref().and_then(|f| f.get(n)).map(|v| v.trim().to_string()).unwrap_or_default()
    };
    let msa = fields("MSA");
    if msa.is_none() {
        return Err(MessageError::Transient(format!("reply without MSA: {}", excerpt(reply))));
    }
    let (code, acknowledged) = (field(&msa, 1), field(&msa, 2));
    let refused = matches!(code.as_str(), "AR" | "CR");
    if acknowledged != control_id && !(refused && acknowledged.is_empty()) {
        return Err(MessageError::Transient(format!(
            "{code} acknowledges control ID {acknowledged:?}, not {control_id:?}"
        )));
    }
    let reason = || {
        let err = fields("ERR");
        // MSA-3 (2.4 and before), else ERR-8 user message, ERR-7 diagnostics, ERR-3's text.
        let text =
            [field(&msa, 3), field(&err, 8), field(&err, 7), field(&err, 3).split('^').nth(1).unwrap_or("").into()]
                .into_iter()
                .find(|t| !t.is_empty())
                .unwrap_or_default();
        let text = unescape(&text);
        if text.is_empty() {
            code.clone()
        } else {
            format!("{code}: {}", excerpt(&text))
        }
    };
    match code.as_str() {
        "AA" | "CA" => Ok(()),
        "AE" | "CE" => Err(MessageError::Transient(reason())),
        "AR" | "CR" => Err(MessageError::Permanent(reason())),
        _ => Err(MessageError::Transient(format!("unknown acknowledgment code {code:?}"))),
    }
}

/// The start of a peer's text, for an error message: valid, escaped, at most 200 characters.
fn excerpt(text: &str) -> String {
    crate::logging::peer_text(text.as_bytes(), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_wraps_and_read_frame_unwraps() {
        let framed = frame("MSH|x\r");
        assert_eq!(framed, b"\x0bMSH|x\r\x1c\x0d");
        let mut reply = std::io::Cursor::new([b"\n".as_slice(), &framed, b"trailing"].concat());
        assert_eq!(read_frame(&mut reply, 100).unwrap(), b"MSH|x\r");
    }

    #[test]
    fn read_frame_finds_an_end_split_across_reads() {
        // A reader that hands out one byte at a time.
        struct Trickle(std::io::Cursor<Vec<u8>>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(1);
                self.0.read(&mut buf[..n])
            }
        }
        let mut reply = Trickle(std::io::Cursor::new(frame("MSA|AA|1\r")));
        assert_eq!(read_frame(&mut reply, 100).unwrap(), b"MSA|AA|1\r");
    }

    #[test]
    fn read_frame_bounds_size_and_needs_the_end() {
        let mut big = std::io::Cursor::new(frame(&"x".repeat(10_000)));
        assert!(matches!(read_frame(&mut big, 1000), Err(MllpError::TooLarge(1000))));
        let mut cut = std::io::Cursor::new(b"\x0bMSH|x".to_vec());
        assert!(matches!(read_frame(&mut cut, 1000), Err(MllpError::Closed)));
    }

    fn ack(code: &str, control_id: &str, extra: &str) -> String {
        format!("MSH|^~\\&|RIS|HOSP|PNEUMOTRIAGE|RAD|20251124160001||ACK^R01^ACK|A1|P|2.5.1\rMSA|{code}|{control_id}{extra}\r")
    }

    #[test]
    fn accepted_acks_are_delivered() {
        assert_eq!(parse_ack(&ack("AA", "C1", ""), "C1"), Ok(()));
        assert_eq!(parse_ack(&ack("CA", "C1", ""), "C1"), Ok(()));
    }

    #[test]
    fn error_acks_are_transient_with_their_text() {
        let Err(MessageError::Transient(text)) = parse_ack(&ack("AE", "C1", "|busy \\T\\ full"), "C1") else {
            panic!("AE is transient")
        };
        assert_eq!(text, "AE: busy & full");
        let with_err = ack("CE", "C1", "") + "ERR||||E||||database down\r";
        assert_eq!(parse_ack(&with_err, "C1"), Err(MessageError::Transient("CE: database down".into())));
    }

    #[test]
    fn reject_acks_are_permanent() {
        assert!(
            matches!(parse_ack(&ack("AR", "C1", "|unknown patient"), "C1"), Err(MessageError::Permanent(t)) if t == "AR: unknown patient")
        );
        assert!(matches!(parse_ack(&ack("CR", "C1", ""), "C1"), Err(MessageError::Permanent(t)) if t == "CR"));
        // A receiver that could not read our message cannot name its control ID.
        assert!(matches!(parse_ack(&ack("AR", "", ""), "C1"), Err(MessageError::Permanent(_))));
    }

    #[test]
    fn an_ack_of_another_message_is_transient() {
        for code in ["AA", "AE", "AR"] {
            assert!(
                matches!(parse_ack(&ack(code, "OTHER", ""), "C1"), Err(MessageError::Transient(t)) if t.contains("OTHER"))
            );
        }
        assert!(matches!(parse_ack(&ack("AA", "", ""), "C1"), Err(MessageError::Transient(_))));
    }

    #[test]
    fn replies_without_msa_or_with_unknown_codes_are_transient() {
        for reply in ["", "garbage", "MSH|^~\\&|RIS\r", "MSAX|AA|C1\r", &ack("ZZ", "C1", "")] {
            assert!(matches!(parse_ack(reply, "C1"), Err(MessageError::Transient(_))), "{reply:?}");
        }
    }
}
