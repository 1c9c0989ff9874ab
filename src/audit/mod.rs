//! The audit trail a hospital's security office reads: IHE ATNA audit messages (DICOM PS3.15
//! A.5) of who received, sent, read, exported and deleted which patient's study, who signed in
//! or was refused, and what the node saw as a security event.
//!
//! An [`AuditEvent`] becomes one message per repository in the database ([`Auditor`] gives the
//! node's identity and the repositories; the store writes the rows, in the transaction of what
//! they record where that writes), and [`sender`] delivers the rows to each repository as
//! syslog ([`syslog`]) at least once, in the background: a repository that is down delays
//! records, never the node's work.

pub mod message;
pub mod sender;
pub mod syslog;

use std::net::IpAddr;

use message::{base64, dcm, own, rfc3881, Code, Element};

use crate::config::Config;

/// A study as a record names it, with its patient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditedStudy {
    pub study_instance_uid: String,
    pub accession_number: Option<String>,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    /// SOP Class UID and how many of its instances the event concerns (none: not counted).
    pub sop_classes: Vec<(String, u64)>,
}

impl AuditedStudy {
    /// The study of a received instance, nothing counted yet.
    pub fn of_header(header: &crate::domain::InstanceHeader) -> AuditedStudy {
        AuditedStudy {
            study_instance_uid: header.study_instance_uid.clone(),
            accession_number: header.accession_number.clone(),
            patient_id: header.patient_id.clone(),
            patient_name: header.patient_name.clone(),
            sop_classes: Vec::new(),
        }
    }

    /// Counts an instance of `sop_class_uid` under `study` in `studies` (added if new).
    pub fn tally(studies: &mut Vec<AuditedStudy>, study: AuditedStudy, sop_class_uid: &str) {
        match studies.iter_mut().find(|s| s.study_instance_uid == study.study_instance_uid) {
            Some(known) => known.add_instance(sop_class_uid),
            None => {
                let mut study = study;
                study.add_instance(sop_class_uid);
                studies.push(study);
            }
        }
    }

    /// Counts one instance of `sop_class_uid`.
    pub fn add_instance(&mut self, sop_class_uid: &str) {
        match self.sop_classes.iter_mut().find(|(uid, _)| uid == sop_class_uid) {
            Some((_, n)) => *n += 1,
            None => self.sop_classes.push((sop_class_uid.to_string(), 1)),
        }
    }
}

/// A DICOM application at the other end of an association.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    pub ae_title: &'a str,
    /// Its IP address or host name.
    pub address: &'a str,
}

/// A person or program using the HTTP API or the command line.
#[derive(Debug, Clone, Copy)]
pub struct User<'a> {
    /// The token's name, the signed-in person, or the operating-system user of a command.
    pub id: &'a str,
    /// Where the request came from; none for a command run on the node's machine.
    pub address: Option<&'a str>,
}

/// What the node saw as a threat or a change to its security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// A TLS handshake that failed (no or a wrong client certificate, no TLS at all).
    TlsRefused,
    /// An association refused by the policy (unknown calling AE title, wrong called one).
    AssociationRefused,
    /// A data set refused as hostile or unreadable (the bounded walk, the checks before decode).
    HostileObject,
    /// The configuration differs from the one the node last ran with.
    ConfigurationChanged,
}

impl Alert {
    fn code(self) -> Code {
        match self {
            Alert::TlsRefused | Alert::AssociationRefused => dcm("110126", "Node Authentication"),
            Alert::HostileObject => own("HOSTILE", "Hostile Object Refused"),
            Alert::ConfigurationChanged => dcm("110131", "Software Configuration"),
        }
    }

    /// The label of the `event` column, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Alert::TlsRefused => "tls_refused",
            Alert::AssociationRefused => "association_refused",
            Alert::HostileObject => "hostile_object",
            Alert::ConfigurationChanged => "configuration_changed",
        }
    }
}

/// One auditable event.
#[derive(Debug, Clone)]
pub enum AuditEvent<'a> {
    /// The node started (Application Activity, Application Start).
    Started,
    /// The node stopped (Application Activity, Application Stop).
    Stopped,
    /// Instances of one study received on one association (DICOM Instances Transferred, Create).
    Received { from: Peer<'a>, study: &'a AuditedStudy },
    /// An object sent to a DICOM destination (DICOM Instances Transferred, Read).
    Sent { to: Peer<'a>, study: &'a AuditedStudy },
    /// A message carrying patient data sent to an HL7, FHIR or webhook receiver (Export).
    Exported { destination: &'a str, address: &'a str, study: &'a AuditedStudy },
    /// A study's record read on the worklist API or page, or its overlay (DICOM Instances
    /// Accessed, Read).
    Accessed { by: User<'a>, study: &'a AuditedStudy },
    /// The worklist listed (Query): who asked, and what.
    Queried { by: User<'a>, endpoint: &'a str, query: &'a str },
    /// A bearer token accepted (`refused`: none) or refused (User Authentication, Login).
    Authentication { user: User<'a>, refused: Option<&'a str> },
    /// A security alert, about a peer or not, and what happened.
    Security { alert: Alert, peer: Option<Peer<'a>>, detail: &'a str },
    /// A study's received images deleted by retention (DICOM Study Deleted).
    Deleted { study: &'a AuditedStudy, why: &'a str },
    /// A study's patient attributes removed by retention (Patient Record, Delete).
    PatientDataRemoved { study: &'a AuditedStudy, why: &'a str },
}

impl AuditEvent<'_> {
    /// The label of the `event` column, metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            AuditEvent::Started => "application_start",
            AuditEvent::Stopped => "application_stop",
            AuditEvent::Received { .. } => "instances_received",
            AuditEvent::Sent { .. } => "instances_sent",
            AuditEvent::Exported { .. } => "export",
            AuditEvent::Accessed { .. } => "instances_accessed",
            AuditEvent::Queried { .. } => "query",
            AuditEvent::Authentication { refused: None, .. } => "login",
            AuditEvent::Authentication { refused: Some(_), .. } => "login_refused",
            AuditEvent::Security { alert, .. } => alert.as_str(),
            AuditEvent::Deleted { .. } => "study_deleted",
            AuditEvent::PatientDataRemoved { .. } => "patient_record_deleted",
        }
    }

    /// The syslog severity (RFC 5424).
    pub fn severity(&self) -> u8 {
        severity(self.label())
    }
}

/// The syslog severity (RFC 5424) of a record by its label: warning (4) for what was refused,
/// notice (5) for the rest.
pub fn severity(label: &str) -> u8 {
    match label {
        "login_refused" | "tls_refused" | "association_refused" | "hostile_object" => 4,
        _ => 5,
    }
}

/// The node as its audit records name it, and where they go.
#[derive(Debug, Clone)]
pub struct Auditor {
    /// AuditSourceID.
    pub source_id: String,
    /// AuditEnterpriseSiteID.
    pub site_id: Option<String>,
    /// The node's AE title: its UserID as a DICOM application.
    pub ae_title: String,
    /// The node's host name: its NetworkAccessPointID, and the syslog HOSTNAME.
    pub host: String,
    pub process_id: u32,
    /// The repositories, by name: each record is kept once per repository until it has it.
    pub repositories: Vec<String>,
}

/// The node's machine name (the kernel's), for records and syslog headers.
pub fn host_name() -> String {
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

impl Auditor {
    /// The auditor `config` asks for; `None` while no repository is configured.
    pub fn of(config: &Config) -> Option<Auditor> {
        let audit = &config.audit;
        audit.enabled().then(|| Auditor {
            source_id: audit.source_id.clone().unwrap_or_else(|| config.node_name()),
            site_id: audit.enterprise_site_id.clone(),
            ae_title: config.dicom.ae_title.clone(),
            host: host_name(),
            process_id: std::process::id(),
            repositories: audit.repositories.iter().map(|r| r.name.clone()).collect(),
        })
    }

    /// The PS3.15 A.5 message of `event`, which happened at `at_ms` (ms since the epoch).
    pub fn message(&self, event: &AuditEvent<'_>, at_ms: i64) -> String {
        let mut out = String::with_capacity(1536);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        let mut m = Element::new(&mut out, "AuditMessage");
        let (id, action, types, outcome, description) = identification(event);
        m = m.child("EventIdentification", |e| {
            let mut e = e
                .attr_opt("EventActionCode", action)
                .attr("EventDateTime", &timestamp(at_ms))
                .attr("EventOutcomeIndicator", outcome)
                .child("EventID", |c| {
                    c.code(id);
                });
            for t in types {
                e = e.child("EventTypeCode", |c| {
                    c.code(t);
                });
            }
            if let Some(d) = description {
                e.text_child("EventOutcomeDescription", d);
            }
        });
        for p in self.participants(event) {
            m = m.child("ActiveParticipant", |a| p.write(a));
        }
        m = m.child("AuditSourceIdentification", |s| {
            s.attr_opt("AuditEnterpriseSiteID", self.site_id.as_deref()).attr("AuditSourceID", &self.source_id).child(
                "AuditSourceTypeCode",
                |c| {
                    // 4: Application Server process or thread
                    c.attr("csd-code", "4");
                },
            );
        });
        for o in objects(event) {
            m = m.child("ParticipantObjectIdentification", |e| o.write(e));
        }
        drop(m);
        out
    }

    /// The node as a participant: its AE title, process and machine.
    fn node(&self, requestor: bool, role: Option<Code>) -> Participant {
        Participant {
            user_id: self.ae_title.clone(),
            alternative: Some(self.process_id.to_string()),
            name: Some("pneumotriage".into()),
            requestor,
            address: Some(self.host.clone()),
            role,
        }
    }

    fn participants(&self, event: &AuditEvent<'_>) -> Vec<Participant> {
        const APPLICATION: Code = dcm("110150", "Application");
        const SOURCE: Code = dcm("110153", "Source Role ID");
        const DESTINATION: Code = dcm("110152", "Destination Role ID");
        let user = |u: &User<'_>, role: Option<Code>| Participant {
            user_id: u.id.to_string(),
            alternative: None,
            name: None,
            requestor: true,
            address: u.address.map(str::to_string),
            role,
        };
        // a peer refused before it named itself (a failed TLS handshake) is its address
        let peer = |p: &Peer<'_>, requestor: bool, role: Code| Participant {
            user_id: if p.ae_title.is_empty() { host_part(p.address) } else { p.ae_title }.to_string(),
            alternative: None,
            name: None,
            requestor,
            address: Some(p.address.to_string()),
            role: Some(role),
        };
        match event {
            AuditEvent::Started | AuditEvent::Stopped => vec![self.node(false, Some(APPLICATION))],
            AuditEvent::Received { from, .. } => {
                vec![peer(from, true, SOURCE), self.node(false, Some(DESTINATION))]
            }
            AuditEvent::Sent { to, .. } => vec![self.node(true, Some(SOURCE)), peer(to, false, DESTINATION)],
            AuditEvent::Exported { destination, address, .. } => vec![
                self.node(true, Some(SOURCE)),
                Participant {
                    user_id: destination.to_string(),
                    alternative: None,
                    name: None,
                    requestor: false,
                    address: Some(address.to_string()),
                    role: Some(DESTINATION),
                },
            ],
            AuditEvent::Accessed { by, .. } => vec![user(by, None), self.node(false, Some(APPLICATION))],
            AuditEvent::Queried { by, .. } => vec![user(by, Some(SOURCE)), self.node(false, Some(DESTINATION))],
            AuditEvent::Authentication { user: u, .. } => vec![user(u, None), self.node(false, Some(APPLICATION))],
            AuditEvent::Security { peer: Some(p), .. } => vec![self.node(false, None), peer(p, true, SOURCE)],
            AuditEvent::Security { peer: None, .. }
            | AuditEvent::Deleted { .. }
            | AuditEvent::PatientDataRemoved { .. } => vec![self.node(true, None)],
        }
    }
}

/// EventID, EventActionCode, EventTypeCodes, EventOutcomeIndicator and description.
fn identification<'e>(
    event: &'e AuditEvent<'_>,
) -> (Code, Option<&'static str>, Vec<Code>, &'static str, Option<&'e str>) {
    const TRANSFERRED: Code = dcm("110104", "DICOM Instances Transferred");
    const ACTIVITY: Code = dcm("110100", "Application Activity");
    match event {
        AuditEvent::Started => (ACTIVITY, Some("E"), vec![dcm("110120", "Application Start")], "0", None),
        AuditEvent::Stopped => (ACTIVITY, Some("E"), vec![dcm("110121", "Application Stop")], "0", None),
        AuditEvent::Received { .. } => (TRANSFERRED, Some("C"), vec![], "0", None),
        AuditEvent::Sent { .. } => (TRANSFERRED, Some("R"), vec![], "0", None),
        AuditEvent::Exported { .. } => (dcm("110106", "Export"), Some("R"), vec![], "0", None),
        AuditEvent::Accessed { .. } => (dcm("110103", "DICOM Instances Accessed"), Some("R"), vec![], "0", None),
        AuditEvent::Queried { .. } => (dcm("110112", "Query"), Some("E"), vec![], "0", None),
        AuditEvent::Authentication { refused, .. } => (
            dcm("110114", "User Authentication"),
            Some("E"),
            vec![dcm("110122", "Login")],
            if refused.is_some() { "4" } else { "0" },
            *refused,
        ),
        // success: informative; minor failure: a threat the node fended off (PS3.15 A.5.3.11)
        AuditEvent::Security { alert, detail, .. } => (
            dcm("110113", "Security Alert"),
            Some("E"),
            vec![alert.code()],
            if *alert == Alert::ConfigurationChanged { "0" } else { "4" },
            Some(detail),
        ),
        AuditEvent::Deleted { why, .. } => (dcm("110105", "DICOM Study Deleted"), Some("D"), vec![], "0", Some(why)),
        AuditEvent::PatientDataRemoved { why, .. } => {
            (dcm("110110", "Patient Record"), Some("D"), vec![], "0", Some(why))
        }
    }
}

/// An ActiveParticipant.
struct Participant {
    user_id: String,
    alternative: Option<String>,
    name: Option<String>,
    requestor: bool,
    address: Option<String>,
    role: Option<Code>,
}

impl Participant {
    fn write(&self, e: Element<'_>) {
        // an address is an IP address (2) or a machine name (1); a port does not belong in it
        let address = self.address.as_deref().map(host_part);
        let kind = address.map(|a| match a {
            a if a.parse::<IpAddr>().is_ok() => "2",
            a if a.contains("://") => "5",
            _ => "1",
        });
        let e = e
            .attr("UserID", &self.user_id)
            .attr_opt("AlternativeUserID", self.alternative.as_deref())
            .attr_opt("UserName", self.name.as_deref())
            .attr("UserIsRequestor", if self.requestor { "true" } else { "false" })
            .attr_opt("NetworkAccessPointID", address)
            .attr_opt("NetworkAccessPointTypeCode", kind);
        if let Some(role) = self.role {
            e.child("RoleIDCode", |c| {
                c.code(role);
            });
        }
    }
}

/// The host of `address`, without a port (`10.0.0.1:4242`, `[::1]:4242`, `host:80`).
fn host_part(address: &str) -> &str {
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        let end = if socket.is_ipv6() {
            address.rfind("]:").unwrap_or(address.len())
        } else {
            address.rfind(':').unwrap_or(address.len())
        };
        return address[..end].trim_start_matches('[');
    }
    address
}

/// A ParticipantObjectIdentification.
struct Object<'a> {
    id: &'a str,
    type_code: &'static str,
    role: &'static str,
    id_type: Code,
    /// ParticipantObjectName, or ParticipantObjectQuery (base64) when `query`.
    name: String,
    query: bool,
    details: Vec<(&'static str, &'a str)>,
    study: Option<&'a AuditedStudy>,
}

impl Object<'_> {
    fn write(&self, e: Element<'_>) {
        let mut e = e
            .attr("ParticipantObjectID", self.id)
            .attr("ParticipantObjectTypeCode", self.type_code)
            .attr("ParticipantObjectTypeCodeRole", self.role)
            .child("ParticipantObjectIDTypeCode", |c| {
                c.code(self.id_type);
            });
        e = if self.query {
            e.text_child("ParticipantObjectQuery", &base64(self.name.as_bytes()))
        } else {
            e.text_child("ParticipantObjectName", &self.name)
        };
        for (kind, value) in &self.details {
            e = e.child("ParticipantObjectDetail", |d| {
                d.attr("type", kind).attr("value", &base64(value.as_bytes()));
            });
        }
        let Some(study) = self.study else { return };
        e.child("ParticipantObjectDescription", |d| {
            let mut d = d;
            if let Some(accession) = &study.accession_number {
                d = d.child("Accession", |a| {
                    a.attr("Number", accession);
                });
            }
            for (uid, n) in &study.sop_classes {
                d = d.child("SOPClass", |s| {
                    s.attr("UID", uid).attr("NumberOfInstances", &n.to_string());
                });
            }
        });
    }
}

/// The study and its patient (a patient only where the database still has one).
fn study_objects(study: &AuditedStudy) -> Vec<Object<'_>> {
    let mut objects = vec![Object {
        id: &study.study_instance_uid,
        type_code: "2",
        role: "3",
        id_type: dcm("110180", "Study Instance UID"),
        // the schema wants a name or a query: the accession number is how people name a study
        name: study.accession_number.clone().unwrap_or_else(|| study.study_instance_uid.clone()),
        query: false,
        details: vec![],
        study: Some(study),
    }];
    if let Some(patient_id) = study.patient_id.as_deref().filter(|id| !id.is_empty()) {
        objects.push(Object {
            id: patient_id,
            type_code: "1",
            role: "1",
            id_type: rfc3881("2", "Patient Number"),
            name: study.patient_name.clone().unwrap_or_default(),
            query: false,
            details: vec![],
            study: None,
        });
    }
    objects
}

fn objects<'a>(event: &'a AuditEvent<'a>) -> Vec<Object<'a>> {
    match event {
        AuditEvent::Started | AuditEvent::Stopped | AuditEvent::Authentication { .. } => vec![],
        AuditEvent::Received { study, .. }
        | AuditEvent::Sent { study, .. }
        | AuditEvent::Exported { study, .. }
        | AuditEvent::Accessed { study, .. }
        | AuditEvent::Deleted { study, .. }
        | AuditEvent::PatientDataRemoved { study, .. } => study_objects(study),
        AuditEvent::Queried { endpoint, query, .. } => vec![Object {
            id: endpoint,
            type_code: "2",
            role: "24",
            id_type: own("WORKLIST", "Worklist API query"),
            name: query.to_string(),
            query: true,
            details: vec![],
            study: None,
        }],
        AuditEvent::Security { alert, peer, detail } => vec![Object {
            id: peer.map(|p| p.address).unwrap_or("configuration"),
            type_code: "2",
            role: "13",
            id_type: rfc3881("12", "URI"),
            name: alert.code().meaning.to_string(),
            query: false,
            details: vec![("Alert Description", detail)],
            study: None,
        }],
    }
}

/// `at_ms` as xsd:dateTime in UTC with milliseconds (also RFC 5424's TIMESTAMP).
pub fn timestamp(at_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auditor() -> Auditor {
        Auditor {
            source_id: "node-1".into(),
            site_id: Some("General Hospital".into()),
            ae_title: "PNEUMOTRIAGE".into(),
            host: "triage01".into(),
            process_id: 42,
            repositories: vec!["siem".into()],
        }
    }

    fn study() -> AuditedStudy {
        let mut s = AuditedStudy {
            study_instance_uid: "1.2.3".into(),
            accession_number: Some("ACC1".into()),
            patient_id: Some("PID-7".into()),
            patient_name: Some("DOE^JANE".into()),
            sop_classes: vec![],
        };
        s.add_instance("1.2.840.10008.5.1.4.1.1.1");
        s.add_instance("1.2.840.10008.5.1.4.1.1.1");
        s
    }

    #[test]
    fn a_received_study_names_both_ends_the_study_and_its_patient() {
        let study = study();
        let event =
            AuditEvent::Received { from: Peer { ae_title: "MODALITY", address: "10.0.0.9:40000" }, study: &study };
        let xml = auditor().message(&event, 1_764_900_000_123);
        for wanted in [
            "<EventIdentification EventActionCode=\"C\" EventDateTime=\"2025-12-05T02:00:00.123Z\" EventOutcomeIndicator=\"0\">",
            "<EventID csd-code=\"110104\" codeSystemName=\"DCM\" originalText=\"DICOM Instances Transferred\"/>",
            "<ActiveParticipant UserID=\"MODALITY\" UserIsRequestor=\"true\" NetworkAccessPointID=\"10.0.0.9\" NetworkAccessPointTypeCode=\"2\"><RoleIDCode csd-code=\"110153\"",
            "<ActiveParticipant UserID=\"PNEUMOTRIAGE\" AlternativeUserID=\"42\" UserName=\"pneumotriage\" UserIsRequestor=\"false\" NetworkAccessPointID=\"triage01\" NetworkAccessPointTypeCode=\"1\"><RoleIDCode csd-code=\"110152\"",
            "<AuditSourceIdentification AuditEnterpriseSiteID=\"General Hospital\" AuditSourceID=\"node-1\"><AuditSourceTypeCode csd-code=\"4\"/></AuditSourceIdentification>",
            "<ParticipantObjectIdentification ParticipantObjectID=\"1.2.3\" ParticipantObjectTypeCode=\"2\" ParticipantObjectTypeCodeRole=\"3\">",
            "<ParticipantObjectName>ACC1</ParticipantObjectName><ParticipantObjectDescription><Accession Number=\"ACC1\"/><SOPClass UID=\"1.2.840.10008.5.1.4.1.1.1\" NumberOfInstances=\"2\"/></ParticipantObjectDescription>",
            "<ParticipantObjectIdentification ParticipantObjectID=\"PID-7\" ParticipantObjectTypeCode=\"1\" ParticipantObjectTypeCodeRole=\"1\"><ParticipantObjectIDTypeCode csd-code=\"2\" codeSystemName=\"RFC-3881\" originalText=\"Patient Number\"/><ParticipantObjectName>DOE^JANE</ParticipantObjectName>",
        ] {
            assert!(xml.contains(wanted), "{wanted}\nnot in\n{xml}");
        }
        assert!(!xml.contains('\n'), "one line: {xml}");
    }

    #[test]
    fn a_study_without_a_patient_any_more_names_only_the_study() {
        let mut study = study();
        study.patient_id = None;
        let event = AuditEvent::Deleted { study: &study, why: "retention.images_days" };
        let xml = auditor().message(&event, 0);
        assert!(xml.contains("EventActionCode=\"D\""), "{xml}");
        assert!(!xml.contains("ParticipantObjectTypeCodeRole=\"1\""), "{xml}");
    }

    #[test]
    fn a_query_carries_itself_in_base64_and_a_refusal_is_a_minor_failure() {
        let by = User { id: "dr.lee", address: Some("192.0.2.4") };
        let xml = auditor().message(&AuditEvent::Queried { by, endpoint: "/api/studies", query: "priority=urgent" }, 0);
        assert!(xml.contains("<ParticipantObjectQuery>cHJpb3JpdHk9dXJnZW50</ParticipantObjectQuery>"), "{xml}");
        let refused = AuditEvent::Authentication { user: by, refused: Some("no such token") };
        let xml = auditor().message(&refused, 0);
        assert!(xml.contains("EventOutcomeIndicator=\"4\""), "{xml}");
        assert!(xml.contains("<EventOutcomeDescription>no such token</EventOutcomeDescription>"), "{xml}");
        assert_eq!(refused.severity(), 4);
    }

    #[test]
    fn addresses_lose_their_port() {
        assert_eq!(host_part("10.0.0.1:4242"), "10.0.0.1");
        assert_eq!(host_part("[::1]:4242"), "::1");
        assert_eq!(host_part("pacs.example.org"), "pacs.example.org");
        assert_eq!(host_part("::1"), "::1");
    }
}
