//! Fuzzing entry points: arbitrary bytes through each path that bytes from the network reach
//! (a DICOM peer's, an HL7 receiver's ACK, a FHIR server's or webhook endpoint's answer, an HTTP
//! client's request) and through the configuration loader, exactly as the node runs them. `fuzz/` drives them with libFuzzer for long runs (coverage
//! guided, memory limited); the tests below replay the committed corpus and run a short,
//! deterministic mutation round on every `cargo test`, so that no target rots and every crash
//! ever found stays fixed (its input is kept in `fuzz/corpus/<target>/`).
//!
//! Each entry point must return for any input: an `Err` is a correct answer, a panic, a stack
//! overflow or an allocation on the input's say-so is a bug.

use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::dicom::{dimse, scan, ul};
use crate::imaging;
use crate::outbox::{http, mllp};

/// A fuzz target: a name (its corpus folder) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// The targets, by the name of their corpus folder.
pub const TARGETS: [Target; 9] = [
    ("pdu", pdu_stream),
    ("command", command_set),
    ("dataset", dataset),
    ("pixels", pixels),
    ("mllp", mllp_reply),
    ("http", http_answer),
    ("request", http_request),
    ("config", config_file),
    ("part10", part10_meta),
];

/// How many mutated inputs each target runs on `cargo test` (about five seconds each on a
/// 2-core machine): a count, not a time, so that every run tries the same inputs.
#[cfg(test)]
const QUICK_RUNS: [(&str, u64); 9] = [
    ("pdu", 200_000),
    ("command", 2_000_000),
    ("dataset", 40_000),
    ("pixels", 30_000),
    ("mllp", 1_000_000),
    ("http", 1_000_000),
    ("request", 10_000),
    ("config", 30_000),
    ("part10", 200_000),
];

/// The pixel budget the `pixels` target decodes within (small, so that a run is fast).
const FUZZ_MAX_PIXELS: u64 = 1 << 20;

/// The transfer syntaxes the SCP accepts for images, as the `pixels` target's first byte selects them.
pub const PIXEL_SYNTAXES: [&str; 10] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
];

/// What an HL7 receiver answers over MLLP: the frame read within its bound, then the ACK.
pub fn mllp_reply(data: &[u8]) {
    if let Ok(reply) = mllp::read_frame(&mut std::io::Cursor::new(data), mllp::MAX_REPLY_BYTES) {
        let _ = mllp::parse_ack(&String::from_utf8_lossy(&reply), "PT0123456789ABCDEF01");
    }
}

/// What a FHIR server or webhook endpoint answers: the status (the first two bytes) and the
/// body, classified, the OperationOutcome's text taken out.
pub fn http_answer(data: &[u8]) {
    let (status, body) = match data {
        [a, b, body @ ..] => (u16::from_be_bytes([*a, *b]), body),
        _ => return,
    };
    let _ = http::classify(status, body, Some("https://fhir.example.org/next"));
}

/// A configuration file: parsed and checked as `serve` loads it. Relative paths resolve under
/// a directory that does not exist; absolute ones (`/dev/zero`, a FIFO) are read as any named
/// file is, within its bound.
pub fn config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let base = std::path::PathBuf::from("/nonexistent/pneumotriage-fuzz");
    if let Ok(config) = crate::config::Config::parse(&text, "fuzz.toml", base, crate::config::Uses::Everything) {
        let _ = (config.summary(), config.database_url(), config.lease(), config.dicom.max_dataset_bytes());
    }
}

/// The first bytes of a PS3.10 object as a STOW-RS part brings them (the seeds: the first 768
/// bytes of pydicom's test files): the file meta read from the whole and from prefixes cut
/// where chunks may end. Once a prefix holds the whole group, its answer is the whole's; a
/// shorter one asks for more.
pub fn part10_meta(data: &[u8]) {
    use crate::dicom::part10::read_meta;
    let whole = read_meta(data);
    let step = (data.len() / 16).max(1);
    for cut in (0..data.len()).step_by(step) {
        let prefix = read_meta(&data[..cut]);
        match &whole {
            Ok(Some(meta)) if cut >= meta.data_set_offset => assert_eq!(prefix.as_ref(), Ok(&Some(meta.clone()))),
            Ok(Some(_)) => assert_eq!(prefix, Ok(None), "a prefix without the whole group asks for more"),
            _ => {}
        }
    }
}

/// What the HTTP side is fuzzed against: a runtime and the router over an empty database.
struct HttpBench {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn http_bench() -> &'static HttpBench {
    static BENCH: std::sync::OnceLock<HttpBench> = std::sync::OnceLock::new();
    BENCH.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let dir = std::env::temp_dir().join(format!("pneumotriage-fuzz-http-{}", std::process::id()));
        let router = runtime.block_on(async {
            let config = crate::config::Config::embedded_default().expect("the embedded default is valid");
            let url = format!("sqlite://{}/fuzz.db", dir.display());
            let store = crate::store::Store::connect(&url, 2, "fuzz").await.expect("an SQLite file in the temp dir");
            store.migrate().await.expect("the schema");
            let (spool, _) = crate::spool::Spool::open(&dir.join("spool"), "fuzz", 0, 1 << 20).expect("a spool");
            let state = crate::http::AppState::new(&config, store, std::sync::Arc::new(spool), Default::default());
            crate::http::router(state)
        });
        HttpBench { runtime, router }
    })
}

/// What an HTTP client sends: the bytes of one connection, served by hyper and the router
/// (request parsing, routing, extractors, handlers) over an empty database. Whatever comes
/// back must be an HTTP/1.x answer, and the connection must end.
pub fn http_request(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bench = http_bench();
    bench.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let service = hyper_util::service::TowerToHyperService::new(bench.router.clone());
        let connection =
            hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let exchange = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let both = async { tokio::join!(connection, exchange) };
        let (_, answer) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
            .await
            .expect("a connection's bytes are answered and the connection ends");
        assert!(answer.is_empty() || answer.starts_with(b"HTTP/1."), "{:?}", String::from_utf8_lossy(&answer));
    });
}

/// A byte stream from a peer, read PDU by PDU by the SCP's upper layer until it fails or ends.
pub fn pdu_stream(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime");
    runtime.block_on(async {
        let mut connection = ul::Connection::new(Box::new(std::io::Cursor::new(data.to_vec())), 16_384);
        while let Ok(incoming) = connection.read().await {
            if let ul::Incoming::PData(pdata) = incoming {
                // every fragment lies within the PDU
                for pdv in &pdata.pdvs {
                    let _ = pdata.fragment(pdv);
                }
            }
        }
    });
}

/// A command set, as joined from its PDV fragments; a parsed one must survive its response.
pub fn command_set(data: &[u8]) {
    if let Ok(command) = dimse::parse_command(data) {
        let response = dimse::encode_response(&command, dimse::status::CANNOT_UNDERSTAND, Some("fuzz"));
        let back = dimse::parse_command(&response).expect("a response we encode parses");
        assert_eq!(back.message_id, command.message_id);
    }
}

/// A data set (first byte: 0 implicit, else explicit VR LE): the bounded walk, and, when it
/// passes, dicom-rs's parse, which the walk must have made safe, then what the pipeline reads
/// of the tags before any pixel: applicability and the input checks.
pub fn dataset(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let ts = if selector % 2 == 0 { PIXEL_SYNTAXES[0] } else { PIXEL_SYNTAXES[1] };
    let Ok(scanned) = scan::scan_bytes(bytes, ts) else { return };
    for tag in [dicom_dictionary_std::tags::PATIENT_NAME, dicom_dictionary_std::tags::SOP_INSTANCE_UID] {
        let _ = scanned.text(tag);
    }
    let ts = TransferSyntaxRegistry.get(ts).expect("a registered transfer syntax");
    if let Ok(obj) = InMemDicomObject::read_dataset_with_ts(bytes, ts) {
        let _ = crate::inference::analyse::not_analysable(&obj);
        let _ = default_selector().decide(&crate::inference::selection::Tags::of(&obj, "FUZZ"));
        let _ = crate::config::InputChecks::default().tags(&obj);
    }
}

/// The default selection rules, compiled once.
fn default_selector() -> &'static crate::inference::selection::Selector {
    static SELECTOR: std::sync::OnceLock<crate::inference::selection::Selector> = std::sync::OnceLock::new();
    SELECTOR.get_or_init(|| {
        crate::inference::selection::Selector::new(&Default::default()).expect("the default rules compile")
    })
}

/// An image data set (first byte: its transfer syntax in [`PIXEL_SYNTAXES`]): the walk, the
/// pixel budget and codestream check, then dicom-rs's parse and the node's decoding and display
/// transforms, as the pipeline runs them.
pub fn pixels(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let ts = PIXEL_SYNTAXES[selector as usize % PIXEL_SYNTAXES.len()];
    if scan::scan_bytes(bytes, ts).is_err() {
        return;
    }
    let syntax = TransferSyntaxRegistry.get(ts).expect("a registered transfer syntax");
    let Ok(obj) = InMemDicomObject::read_dataset_with_ts(bytes, syntax) else { return };
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(ts)
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.1")
        .media_storage_sop_instance_uid("1.2.3.4");
    let Ok(file) = obj.with_meta(meta) else { return };
    if imaging::check_pixels(&file, FUZZ_MAX_PIXELS).is_ok() {
        let _ = imaging::display_image(&file);
        let model = imaging::Preprocess { height: 32, width: 48, channels: 1, mean: 0.5, std: 0.25 };
        let _ = imaging::model_inputs(&file, &[model]);
    }
}

/// A small, deterministic mutator (xorshift): the kinds of damage that matter to a parser of
/// length-prefixed structures.
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        Mutator(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A mutated copy of `input`: one to four of bit flips, interesting bytes and 32-bit
    /// lengths, truncation, duplicated or deleted runs.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            if out.is_empty() {
                out.push(self.next() as u8);
                continue;
            }
            let at = self.below(out.len());
            match self.below(6) {
                0 => out[at] ^= 1 << self.below(8),
                1 => out[at] = [0x00, 0xFF, 0x7F, 0x80, 0xFE, 0xE0][self.below(6)],
                2 => {
                    let value: u32 = [0xFFFF_FFFF, 0xFFFF_FFF0, 0, 0x7FFF_FFFF, 0x8000, 1 << 20][self.below(6)];
                    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                        if let Some(slot) = out.get_mut(at + i) {
                            *slot = b;
                        }
                    }
                }
                3 => out.truncate(at),
                4 => {
                    let end = (at + 1 + self.below(64)).min(out.len());
                    let run = out[at..end].to_vec();
                    let to = self.below(out.len());
                    out.splice(to..to, run);
                }
                _ => {
                    let end = (at + 1 + self.below(64)).min(out.len());
                    out.drain(at..end);
                }
            }
        }
        out
    }
}

/// The committed corpus of a target (`fuzz/corpus/<target>/`), read from the source tree.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (p.file_name().unwrap_or_default().to_string_lossy().into_owned(), std::fs::read(&p).unwrap_or_default())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Each target's runs times `PNEUMOTRIAGE_FUZZ_SCALE` (default 1), for a longer round by hand.
    fn runs(target: &str) -> u64 {
        let scale = std::env::var("PNEUMOTRIAGE_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
        QUICK_RUNS.iter().find(|(name, _)| *name == target).map_or(0, |(_, n)| n * scale)
    }

    /// Replays every corpus input, then as many mutated ones as [`runs`] says; prints what it ran.
    fn run(target: &str) {
        let (_, entry) = TARGETS.iter().find(|(name, _)| *name == target).expect("a target");
        let corpus = corpus(target);
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} has no seeds");
        for (_, input) in &corpus {
            entry(input);
        }
        let mut mutator = Mutator::new(0x5EED ^ target.len() as u64);
        let started = Instant::now();
        for _ in 0..runs(target) {
            let (_, seed) = &corpus[mutator.below(corpus.len())];
            entry(&mutator.mutate(seed));
        }
        println!(
            "fuzz {target}: {} corpus inputs, {} mutated inputs in {:.1?}",
            corpus.len(),
            runs(target),
            started.elapsed()
        );
    }

    /// The inputs of the crashes found so far are refused before any decoder runs, for the
    /// reason that would have crashed it.
    #[test]
    fn crash_regressions_are_refused_for_their_reason() {
        let expected = [
            ("regression-rle-short-segment.bin", "decodes to"),
            ("regression-jpeg-zero-samples.bin", "Samples per Pixel"),
            ("regression-jpeg-bits-allocated-below-precision.bin", "Bits Allocated says 8"),
            ("regression-j2k-repeated-rows.bin", "Columns x Rows say 64x1"),
        ];
        let pixels = corpus("pixels");
        for (name, reason) in expected {
            let (_, input) = pixels.iter().find(|(n, _)| n == name).expect("a regression input");
            let ts = PIXEL_SYNTAXES[input[0] as usize % PIXEL_SYNTAXES.len()];
            let syntax = TransferSyntaxRegistry.get(ts).unwrap();
            let obj = InMemDicomObject::read_dataset_with_ts(&input[1..], syntax).unwrap();
            let meta = FileMetaTableBuilder::new()
                .transfer_syntax(ts)
                .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.1")
                .media_storage_sop_instance_uid("1.2.3.4");
            let refusal = imaging::check_pixels(&obj.with_meta(meta).unwrap(), FUZZ_MAX_PIXELS).unwrap_err();
            assert!(refusal.to_string().contains(reason), "{name}: {refusal}");
        }
        let (_, command) = corpus("command").into_iter().find(|(n, _)| n == "regression-non-ascii-uid.bin").unwrap();
        let parsed = dimse::parse_command(&command).unwrap();
        let response = dimse::parse_command(&dimse::encode_response(&parsed, 0xC000, Some("é"))).unwrap();
        assert_eq!(response.affected_sop_instance_uid, None, "a UID that is not one is not echoed");
    }

    #[test]
    fn fuzz_pdu_stream() {
        run("pdu");
    }

    #[test]
    fn fuzz_command_set() {
        run("command");
    }

    #[test]
    fn fuzz_dataset() {
        run("dataset");
    }

    #[test]
    fn fuzz_pixels() {
        run("pixels");
    }

    #[test]
    fn fuzz_mllp_reply() {
        run("mllp");
    }

    #[test]
    fn fuzz_http_answer() {
        run("http");
    }

    #[test]
    fn fuzz_http_request() {
        run("request");
    }

    #[test]
    fn fuzz_config_file() {
        run("config");
    }

    #[test]
    fn fuzz_part10_meta() {
        run("part10");
    }
}
