//! What the node refuses, and that a refusal leaves nothing behind: no row, no spool file.

use std::time::Duration;

use crate::common;
use crate::common::scu::{
    self, associate, associate_as, context_id, dataset_of, send_command, send_data, store_command,
};
use crate::common::{mr_small, pydicom_data, sop_instance_uid, storescu, text, Backend, Setup};
use dicom_ul::Pdu;

const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

fn assert_nothing_kept(setup: &Setup) {
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 0);
    assert_eq!(setup.count("SELECT COUNT(*) FROM jobs"), 0);
    assert_eq!(setup.spool_files(), Vec::<String>::new(), "no file may remain in the spool");
}

fn unknown_calling_ae_is_rejected(backend: Backend) {
    let setup = Setup::new(backend);
    let node = setup.start();
    let out = storescu(setup.port, &["-aet", "INTRUDER"], &[&pydicom_data("RG1_UNCR.dcm")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("Calling AE Title Not Recognized"), "{}", text(&out));
    let log = node.wait_for_log("association rejected");
    assert!(log.contains("INTRUDER") && log.contains("127.0.0.1"), "the log names the peer: {log}");
    setup.wait_count("SELECT COUNT(*) FROM events WHERE kind = 'association_rejected' AND peer_ae = 'INTRUDER'", 1);
    assert_nothing_kept(&setup);
}

fn known_ae_from_another_host_is_rejected(backend: Backend) {
    let setup = Setup::new(backend);
    setup.write_config("", "", "[[dicom.peers]]\nae_title = \"STORESCU\"\nhost = \"10.9.9.9\"\n");
    let _node = setup.start();
    let out = storescu(setup.port, &[], &[&pydicom_data("RG1_UNCR.dcm")]);
    assert!(text(&out).contains("Calling AE Title Not Recognized"), "{}", text(&out));
    assert_nothing_kept(&setup);
}

fn wrong_called_ae_is_rejected(backend: Backend) {
    let setup = Setup::new(backend);
    let _node = setup.start();
    let err = associate_as(setup.port, "TESTSCU", "SOMEONE_ELSE", &[(CR, EXPLICIT_LE)]).expect_err("rejected");
    assert!(err.to_string().to_lowercase().contains("reject"), "{err}");
    setup.wait_count("SELECT COUNT(*) FROM events WHERE kind = 'association_rejected'", 1);
}

fn mr_is_refused_unless_store_only_is_configured(backend: Backend) {
    let setup = Setup::new(backend);
    let node = setup.start();
    let mr = mr_small();
    let out = storescu(setup.port, &[], &[&mr]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("No presentation context"), "{}", text(&out));
    assert_nothing_kept(&setup);
    drop(node);

    setup.write_config("", "accept_all_storage = true", common::DEFAULT_PEERS);
    let _node = setup.start();
    let out = storescu(setup.port, &[], &[&mr]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = setup.instances();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].4, "skipped", "store-only classes are never analysed");
}

/// A C-STORE on the Verification context is not a store: Verification is C-ECHO alone, so its
/// SOP class is not a storage class the node takes (0x0122), whatever the data set holds.
fn a_store_of_the_verification_class_is_refused_0122(backend: Backend) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    const VERIFICATION: &str = "1.2.840.10008.1.1";
    let setup = Setup::with(backend, "", "accept_all_storage = true");
    let _node = setup.start();
    let obj = dicom_object::InMemDicomObject::from_element_iter([
        DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(VERIFICATION)),
        DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4.6")),
        DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from("1.2.3.4")),
    ]);
    let mut data = Vec::new();
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    obj.write_dataset_with_ts(&mut data, &ts).unwrap();
    let mut assoc = associate(setup.port, &[(VERIFICATION, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, VERIFICATION);
    assert_eq!(scu::store(&mut assoc, ctx, VERIFICATION, "1.2.3.4.6", &data), 0x0122);
    assoc.release().unwrap();
    assert_nothing_kept(&setup);
}

/// PS3.8 9.3.2: an association request of a protocol version other than 1 is rejected by the
/// ACSE, reason "protocol version not supported" (source 2, reason 2), permanently.
fn an_unknown_protocol_version_is_rejected(backend: Backend) {
    use dicom_ul::pdu::{AssociationRQ, PresentationContextProposed, UserVariableItem};
    use std::io::{Read, Write};
    let setup = Setup::new(backend);
    let node = setup.start();
    let request = Pdu::AssociationRQ(AssociationRQ {
        protocol_version: 2,
        calling_ae_title: "TESTSCU".into(),
        called_ae_title: "PNEUMOTRIAGE".into(),
        application_context_name: "1.2.840.10008.3.1.1.1".into(),
        presentation_contexts: vec![PresentationContextProposed {
            id: 1,
            abstract_syntax: "1.2.840.10008.1.1".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
        }],
        user_variables: vec![UserVariableItem::MaxLength(16384)],
    });
    let mut bytes = Vec::new();
    dicom_ul::pdu::write_pdu(&mut bytes, &request).unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(&bytes).unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&0x03), "A-ASSOCIATE-RJ expected, got {reply:?}");
    assert_eq!(&reply[7..10], &[1, 2, 2], "rejected permanently by the ACSE: protocol version not supported");
    let log = node.wait_for_log("association rejected");
    assert!(log.contains("protocol version 0x0002 not supported"), "{log}");
    assert_nothing_kept(&setup);
}

fn malformed_data_set_is_answered_c000(backend: Backend) {
    let setup = Setup::new(backend);
    let node = setup.start();
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    // (0008,0016) UI claiming 0xFFFF bytes, then the data set ends
    let garbage = [0x08, 0x00, 0x16, 0x00, b'U', b'I', 0xFF, 0xFF, b'1', b'.', b'2'];
    assert_eq!(scu::store(&mut assoc, ctx, CR, "1.2.3.4", &garbage), 0xC000);
    // the association goes on: a good instance after a bad one is stored
    let file = pydicom_data("RG1_UNCR.dcm");
    let (data, _) = dataset_of(&file);
    assert_eq!(scu::store(&mut assoc, ctx, CR, &sop_instance_uid(&file), &data), 0x0000);
    assoc.release().unwrap();
    let log = node.wait_for_log("instance refused");
    assert!(log.contains("status=0xC000") && log.contains("TESTSCU") && log.contains("127.0.0.1"), "{log}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances WHERE sop_instance_uid = '1.2.3.4'"), 0);
    setup.wait_count("SELECT COUNT(*) FROM events WHERE kind = 'store_failed'", 1);
    assert_eq!(setup.spool_files().len(), 1, "only the good instance: {:?}", setup.spool_files());
}

fn data_set_that_contradicts_its_command_is_answered_a900(backend: Backend) {
    let setup = Setup::new(backend);
    let _node = setup.start();
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    let (data, _) = dataset_of(&pydicom_data("RG1_UNCR.dcm"));
    assert_eq!(scu::store(&mut assoc, ctx, CR, "1.2.3.4.5", &data), 0xA900);
    assoc.release().unwrap();
    assert_nothing_kept(&setup);
}

fn disk_below_the_floor_is_answered_a700(backend: Backend) {
    // a floor no disk reaches
    let setup = Setup::with(backend, "min_free_disk_mb = 1000000000", "");
    let _node = setup.start();
    let file = pydicom_data("RG1_UNCR.dcm");
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    let (data, _) = dataset_of(&file);
    assert_eq!(scu::store(&mut assoc, ctx, CR, &sop_instance_uid(&file), &data), 0xA700);
    assoc.release().unwrap();
    let out = storescu(setup.port, &[], &[&file]);
    assert!(text(&out).contains("Refused: OutOfResources"), "{}", text(&out));
    assert_nothing_kept(&setup);
}

fn commands_spanning_several_pdvs_are_understood(backend: Backend) {
    let setup = Setup::new(backend);
    let _node = setup.start();
    let file = pydicom_data("RG1_UNCR.dcm");
    let uid = sop_instance_uid(&file);
    let (data, _) = dataset_of(&file);
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    send_command(&mut assoc, ctx, &store_command(9, CR, &uid), true);
    send_data(&mut assoc, ctx, &data, true);
    let response = scu::read_response(&mut assoc);
    assert_eq!(response.status, Some(0x0000));
    assert_eq!(response.message_id, 9, "the response names the request's message id");
    assoc.release().unwrap();
    assert_eq!(setup.instances().len(), 1);
}

fn abort_in_the_middle_of_a_data_set_keeps_nothing(backend: Backend) {
    // one association at a time: the aborted one must give its slot back
    let setup = Setup::with(backend, "", "max_associations = 1");
    let node = setup.start();
    let file = pydicom_data("RG1_UNCR.dcm");
    let (data, _) = dataset_of(&file);
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    send_command(&mut assoc, ctx, &store_command(1, CR, &sop_instance_uid(&file)), false);
    send_data(&mut assoc, ctx, &data[..data.len() / 2], false);
    assoc.abort().unwrap();
    node.wait_for_log("association ended: aborted by the peer");
    assert_nothing_kept(&setup);
    // and the node still serves
    assert!(storescu(setup.port, &[], &[&file]).status.success());
    assert_eq!(setup.instances().len(), 1);
}

fn association_limit_rejects_transiently(backend: Backend) {
    let setup = Setup::with(backend, "", "max_associations = 1");
    let _node = setup.start();
    let first = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let err = associate(setup.port, &[(CR, EXPLICIT_LE)]).expect_err("the second is rejected");
    assert!(format!("{err:?}").contains("Transient"), "{err:?}");
    first.release().unwrap();
    // the slot is freed once the node has seen the release through
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match associate(setup.port, &[(CR, EXPLICIT_LE)]) {
            Ok(again) => break again.release().unwrap(),
            Err(e) => assert!(std::time::Instant::now() < deadline, "no slot after release: {e:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn idle_association_is_aborted(backend: Backend) {
    let setup = Setup::with(backend, "", "idle_timeout_secs = 1");
    let node = setup.start();
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    match assoc.receive() {
        Ok(Pdu::AbortRQ { .. }) | Err(_) => {}
        Ok(other) => panic!("expected an abort, got {other:?}"),
    }
    let log = node.wait_for_log("aborted: idle");
    assert!(log.contains("TESTSCU"), "{log}");
}

on_both_backends!(
    unknown_calling_ae_is_rejected,
    known_ae_from_another_host_is_rejected,
    wrong_called_ae_is_rejected,
    mr_is_refused_unless_store_only_is_configured,
    a_store_of_the_verification_class_is_refused_0122,
    an_unknown_protocol_version_is_rejected,
    malformed_data_set_is_answered_c000,
    data_set_that_contradicts_its_command_is_answered_a900,
    disk_below_the_floor_is_answered_a700,
    commands_spanning_several_pdvs_are_understood,
    abort_in_the_middle_of_a_data_set_keeps_nothing,
    association_limit_rejects_transiently,
    idle_association_is_aborted,
);

/// PostgreSQL going away under a running node: 0xA700, and the spool file is not kept.
#[test]
fn database_unreachable_is_answered_a700() {
    let setup = Setup::new(Backend::Postgres);
    let _node = setup.start();
    let name = setup.db.url.rsplit('/').next().unwrap().to_string();
    common::psql(&format!("DROP DATABASE {name} WITH (FORCE)"));
    let file = pydicom_data("RG1_UNCR.dcm");
    let (data, _) = dataset_of(&file);
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    assert_eq!(scu::store(&mut assoc, ctx, CR, &sop_instance_uid(&file), &data), 0xA700);
    assoc.release().unwrap();
    assert_eq!(setup.spool_files(), Vec::<String>::new());
}
