//! A `dicomweb` source: QIDO-RS for the studies and their series (PS3.18 10.6,
//! `GET {url}/studies?...`), then WADO-RS for each series wanted (`GET
//! {url}/studies/{uid}/series/{uid}`, multipart/related application/dicom), its
//! parts received here as STOW-RS parts are (`dicom::part10`): streamed into the spool, checked,
//! durable before they count.

use std::io::Read;
use std::sync::Arc;

use serde_json::Value;

use crate::dicom::part10::{multipart_boundary, Origin, Receiving};
use crate::dicom::qr::{Moved, SeriesMatch, StudyMatch, StudyQuery};
use crate::dicom::scu::SendError;
use crate::outbox::http::HttpTarget;
use crate::outbox::MessageError;

/// The most of a QIDO-RS answer that is read (10 000 studies fit many times over).
const MAX_QIDO_BYTES: u64 = 64 << 20;
/// The chunks a WADO-RS answer is read in, and how many wait between the reader and ingest.
const CHUNK: usize = 256 << 10;
const CHUNKS_IN_FLIGHT: usize = 4;

fn failed(e: MessageError) -> SendError {
    match e {
        MessageError::Transient(m) => SendError::Transient(m),
        MessageError::Permanent(m) => SendError::Permanent(m),
    }
}

/// The studies matching `query`, at most `limit` (blocking).
pub fn find_studies(target: &HttpTarget, query: &StudyQuery, limit: usize) -> Result<Vec<StudyMatch>, SendError> {
    let mut params = form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("StudyInstanceUID", &query.study_instance_uid),
        ("AccessionNumber", &query.accession_number),
        ("StudyDate", &query.study_date),
        ("ModalitiesInStudy", &query.modality),
    ] {
        if let Some(value) = value {
            params.append_pair(key, value);
        }
    }
    params.append_pair("includefield", "00201208");
    params.append_pair("limit", &(limit + 1).to_string());
    let found = qido(target, &format!("studies?{}", params.finish()), limit, "studies")?;
    Ok(found.iter().filter_map(study_match).collect())
}

/// The series of a study (blocking).
pub fn find_series(target: &HttpTarget, study: &str, limit: usize) -> Result<Vec<SeriesMatch>, SendError> {
    let query = format!("studies/{study}/series?includefield=00201209&limit={}", limit + 1);
    let found = qido(target, &query, limit, "series")?;
    Ok(found.iter().filter_map(series_match).collect())
}

/// One QIDO-RS query: its matches, at most `limit` (`what` names them in the refusal).
fn qido(target: &HttpTarget, path_and_query: &str, limit: usize, what: &str) -> Result<Vec<Value>, SendError> {
    let response = target.get(path_and_query, "application/dicom+json").map_err(failed)?;
    let mut body = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(MAX_QIDO_BYTES)
        .read_to_end(&mut body)
        .map_err(|e| SendError::Transient(format!("the QIDO-RS answer broke off: {e}")))?;
    let found: Vec<Value> = if body.is_empty() {
        Vec::new() // no match: some servers answer 204, some an empty 200
    } else {
        serde_json::from_slice(&body).map_err(|e| SendError::Permanent(format!("an unreadable QIDO-RS answer: {e}")))?
    };
    if found.len() > limit {
        return Err(SendError::Permanent(format!("the source found more than {limit} {what}; narrow the query")));
    }
    Ok(found)
}

/// The values of `tag` in a match (the DICOM JSON model), as text: IS and DS values may come
/// as numbers or strings.
fn texts(item: &Value, tag: &str) -> Vec<String> {
    let values = item.pointer(&format!("/{tag}/Value")).and_then(Value::as_array).cloned().unwrap_or_default();
    values.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect()
}

/// A series of a QIDO-RS answer; none without a valid Series Instance UID.
fn series_match(item: &Value) -> Option<SeriesMatch> {
    let series = texts(item, "0020000E").into_iter().next()?;
    crate::spool::sanitize_uid(&series)?;
    Some(SeriesMatch {
        series_instance_uid: series,
        modality: texts(item, "00080060").into_iter().next().unwrap_or_default(),
        instances: texts(item, "00201209").first().and_then(|n| n.trim().parse().ok()),
    })
}

/// A study of a QIDO-RS answer; none without a valid Study Instance UID.
fn study_match(item: &Value) -> Option<StudyMatch> {
    let study = texts(item, "0020000D").into_iter().next()?;
    crate::spool::sanitize_uid(&study)?;
    Some(StudyMatch {
        study_instance_uid: study,
        study_date: texts(item, "00080020").into_iter().next().unwrap_or_default(),
        modalities: texts(item, "00080061"),
        instances: texts(item, "00201208").first().and_then(|n| n.trim().parse().ok()),
    })
}

/// Retrieves the series by WADO-RS and receives each of its instances; the counts of what was
/// kept (`completed`) and refused (`failed`).
pub async fn retrieve_series(
    target: Arc<HttpTarget>,
    receiving: &Receiving,
    (study, series): (&str, &str),
    origin: &Origin,
) -> Result<Moved, SendError> {
    let path = format!("studies/{study}/series/{series}");
    let accept = "multipart/related; type=\"application/dicom\"";
    let response = tokio::task::spawn_blocking(move || target.get(&path, accept))
        .await
        .map_err(|e| SendError::Transient(format!("the retrieving task failed: {e}")))?
        .map_err(failed)?;
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let boundary = multipart_boundary(content_type)
        .map_err(|e| SendError::Permanent(format!("the WADO-RS answer is not what was asked for: {e}")))?;
    // the blocking reader feeds ingest through a short queue: at most a few chunks in memory
    let (chunks, mut queue) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(CHUNKS_IN_FLIGHT);
    let mut reader = response.into_body().into_reader();
    let reading = tokio::task::spawn_blocking(move || loop {
        let mut chunk = vec![0u8; CHUNK];
        let read = match reader.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                chunk.truncate(n);
                Ok(chunk)
            }
            Err(e) => Err(e),
        };
        let last = read.is_err();
        if chunks.blocking_send(read).is_err() || last {
            return;
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| queue.poll_recv(cx));
    let (results, broken) = receiving.receive(stream, boundary, Some(study.to_string()), origin).await;
    reading.abort();
    if let Some(e) = broken {
        return Err(SendError::Transient(format!("the WADO-RS answer broke off: {e}")));
    }
    let kept = results.iter().filter(|r| r.kept()).count() as u32;
    Ok(Moved { status: 0, completed: kept, failed: results.len() as u32 - kept, warning: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qido_match_is_read_with_numbers_as_numbers_or_strings() {
        let item: Value = serde_json::from_str(
            r#"{"0020000D":{"vr":"UI","Value":["1.2.3"]},"00080020":{"vr":"DA","Value":["20261201"]},
                "00080061":{"vr":"CS","Value":["CR","DX"]},"00201208":{"vr":"IS","Value":["2"]}}"#,
        )
        .unwrap();
        let m = study_match(&item).unwrap();
        assert_eq!((m.study_instance_uid.as_str(), m.study_date.as_str(), m.instances), ("1.2.3", "20261201", Some(2)));
        assert_eq!(m.modalities, vec!["CR", "DX"]);
        let number: Value =
            serde_json::from_str(r#"{"0020000D":{"vr":"UI","Value":["1.2"]},"00201208":{"vr":"IS","Value":[3]}}"#)
                .unwrap();
        assert_eq!(study_match(&number).unwrap().instances, Some(3));
        let bad: Value = serde_json::from_str(r#"{"0020000D":{"vr":"UI","Value":["../etc"]}}"#).unwrap();
        assert!(study_match(&bad).is_none());
        let series: Value = serde_json::from_str(
            r#"{"0020000E":{"vr":"UI","Value":["1.2.4"]},"00080060":{"vr":"CS","Value":["SEG"]},"00201209":{"vr":"IS","Value":[1]}}"#,
        )
        .unwrap();
        let s = series_match(&series).unwrap();
        assert_eq!((s.series_instance_uid.as_str(), s.modality.as_str(), s.instances), ("1.2.4", "SEG", Some(1)));
    }
}
