#!/usr/bin/env python3
"""Makes the seed corpus of pneumotriage's four fuzz targets (see src/fuzz.rs, fuzz/README.md).

A coverage-guided fuzzer (and the short mutation round that `cargo test` runs on every build)
reaches deep code only from inputs that already get past the first checks, so each target gets
a few well-formed, realistic inputs in exactly the byte format its entry point takes:

  pdu      the byte stream a DICOM SCU sends to our SCP over TCP (PS3.8 9.3): concatenated
           PDUs, built with pynetdicom's own PDU and DIMSE encoders.
  command  a DIMSE command set alone (group 0000, Implicit VR Little Endian, Command Group
           Length first), as joined from command PDVs.
  dataset  one selector byte (0 = Implicit VR LE, 1 = Explicit VR LE), then a data set without
           preamble or file meta group, re-encoded by pydicom from real small files (pydicom's
           test files, one deid-data CT made small) plus hand-made nested sequences.
  pixels   one selector byte (index into PIXEL_SYNTAXES below, the same list as src/fuzz.rs),
           then a CR chest image data set in that transfer syntax: pydicom-data's RG1_UNCR
           (a real Philips CR chest) downscaled to 64x64 (and 96x80), compressed with dcmtk
           (RLE, JPEG, JPEG-LS) or pylibjpeg-openjpeg (JPEG 2000).

Everything is deterministic (fixed UIDs under 1.2.826.0.1.3680043.10.1447.77, no clocks, no
randomness) and offline. Every seed is decoded back (PDUs by pynetdicom, data sets and pixels
by pydicom and the pylibjpeg plugins) before it is written. Files are overwritten, never
deleted, so crash inputs kept in the corpus survive a rerun.

Usage: make_seeds.py [OUTPUT_DIR]   (default: the `corpus` folder beside this script)
Needs: pydicom 3, pynetdicom, numpy, pylibjpeg (+ openjpeg, libjpeg, rle), pydicom-data,
deid-data, and dcmtk's dcmcjpeg, dcmcjpls and dcmcrle on PATH.
"""

import copy
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
from io import BytesIO

import numpy as np
import openjpeg
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pynetdicom import dimse_messages as dm
from pynetdicom import dimse_primitives as dp
from pynetdicom import pdu as pdus
from pynetdicom import pdu_primitives as pp
from pynetdicom.dsutils import decode as pn_decode
from pynetdicom.dsutils import encode as pn_encode
from pynetdicom.presentation import PresentationContext

UID_ROOT = "1.2.826.0.1.3680043.10.1447.77"

# The `pixels` target's first byte indexes this list (src/fuzz.rs PIXEL_SYNTAXES).
PIXEL_SYNTAXES = [
    "1.2.840.10008.1.2",  # 0 Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # 1 Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # 2 RLE Lossless
    "1.2.840.10008.1.2.4.50",  # 3 JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.57",  # 4 JPEG Lossless (process 14)
    "1.2.840.10008.1.2.4.70",  # 5 JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # 6 JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # 7 JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # 8 JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # 9 JPEG 2000
]
IMPLICIT_LE, EXPLICIT_LE = PIXEL_SYNTAXES[0], PIXEL_SYNTAXES[1]

VERIFICATION = "1.2.840.10008.1.1"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
CALLED_AE, CALLING_AE = "PNEUMOTRIAGE", "STORESCU"
MAX_PDU = 16384
IMPLEMENTATION_UID = f"{UID_ROOT}.1"
IMPLEMENTATION_VERSION = "PT_FUZZ_SEEDS"

MAX_SEED = 300 * 1024  # fuzz/run passes -max_len=262144; ours stay far below


def uid(n):
    return f"{UID_ROOT}.{n}"


class Corpus:
    """Writes seeds under OUTPUT_DIR/<target>/ and remembers them for the summary table."""

    def __init__(self, root):
        self.root = root
        self.rows = []

    def write(self, target, name, data, note=""):
        assert len(data) <= MAX_SEED, f"{target}/{name} is {len(data)} bytes"
        folder = os.path.join(self.root, target)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        self.rows.append((target, name, len(data), hashlib.sha256(data).hexdigest()[:12], note))

    def report(self):
        width = max(len(f"{t}/{n}") for t, n, *_ in self.rows)
        for target, name, size, digest, note in self.rows:
            print(f"{target + '/' + name:<{width}} {size:>7} B  {digest}  {note}")
        for target in sorted({r[0] for r in self.rows}):
            sizes = [r[2] for r in self.rows if r[0] == target]
            print(f"{target}: {len(sizes)} seeds, {sum(sizes)} bytes")
        print(f"total: {len(self.rows)} seeds, {sum(r[2] for r in self.rows)} bytes")


# ---------------------------------------------------------------------------------------------
# data set encoding helpers


def encode_dataset(ds, implicit):
    """The data set alone (no preamble, no group 0002), little endian, implicit or explicit VR."""
    ds = copy.deepcopy(ds)
    for elem in list(ds):
        if elem.tag.group == 0x0002:
            del ds[elem.tag]
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def decode_dataset(data, implicit):
    return read_dataset(BytesIO(data), implicit, True)


def strip_file(data):
    """A Part 10 file's data set: drop the 128-byte preamble, 'DICM' and the meta group."""
    assert data[128:132] == b"DICM", "not a Part 10 file"
    tag, vr, length, meta_length = struct.unpack_from("<4s2sHI", data, 132)
    assert tag == b"\x02\x00\x00\x00" and vr == b"UL" and length == 4, "no (0002,0000) UL"
    rest = data[144 + meta_length :]
    assert rest[:2] != b"\x02\x00", "meta group longer than its group length says"
    return rest


# ---------------------------------------------------------------------------------------------
# pdu: PDU byte streams, SCU to SCP


def presentation_context(context_id, abstract_syntax, transfer_syntaxes):
    cx = PresentationContext()
    cx.context_id = context_id
    cx.abstract_syntax = abstract_syntax
    cx.transfer_syntax = transfer_syntaxes
    return cx


def associate_rq(extra_user_items=(), contexts=None):
    prim = pp.A_ASSOCIATE()
    prim.application_context_name = APPLICATION_CONTEXT
    prim.calling_ae_title = CALLING_AE
    prim.called_ae_title = CALLED_AE
    prim.presentation_context_definition_list = contexts or [
        presentation_context(1, VERIFICATION, [IMPLICIT_LE, EXPLICIT_LE]),
        presentation_context(3, CR_STORAGE, [IMPLICIT_LE, EXPLICIT_LE]),
    ]
    max_length = pp.MaximumLengthNotification()
    max_length.maximum_length_received = MAX_PDU
    class_uid = pp.ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_UID
    version = pp.ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    prim.user_information = [max_length, class_uid, version, *extra_user_items]
    pdu = pdus.A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def p_data_tf(pdvs):
    """One P-DATA-TF PDU holding the given (context id, message control header + bytes) PDVs."""
    prim = pp.P_DATA()
    prim.presentation_data_value_list = [[cid, bytes(pdv)] for cid, pdv in pdvs]
    pdu = pdus.P_DATA_TF()
    pdu.from_primitive(prim)
    return pdu.encode()


def release_rq():
    return pdus.A_RELEASE_RQ().encode()


def abort_rq(source, reason=0):
    if source == 2:
        prim = pp.A_P_ABORT()
        prim.provider_reason = reason
    else:
        prim = pp.A_ABORT()
        prim.abort_source = source
    pdu = pdus.A_ABORT_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def dimse_pdus(message, context_id):
    """P-DATA-TF PDUs for a DIMSE message as pynetdicom's encoder fragments it."""
    return b"".join(
        p_data_tf(prim.presentation_data_value_list)
        for prim in message.encode_msg(context_id, MAX_PDU)
    )


def message(cls, prim, tweak=None):
    msg = cls()
    msg.primitive_to_message(prim)
    if tweak is not None:
        tweak(msg.command_set)
        msg._set_command_group_length()
    return msg


def echo_rq(message_id=1):
    prim = dp.C_ECHO()
    prim.MessageID = message_id
    prim.AffectedSOPClassUID = VERIFICATION
    return message(dm.C_ECHO_RQ, prim)


def store_rq(dataset_bytes, sop_instance, message_id=2, tweak=None):
    prim = dp.C_STORE()
    prim.MessageID = message_id
    prim.AffectedSOPClassUID = CR_STORAGE
    prim.AffectedSOPInstanceUID = sop_instance
    prim.Priority = 0x0000
    prim.DataSet = BytesIO(dataset_bytes)
    return message(dm.C_STORE_RQ, prim, tweak)


PDU_TYPES = {
    0x01: pdus.A_ASSOCIATE_RQ,
    0x02: pdus.A_ASSOCIATE_AC,
    0x03: pdus.A_ASSOCIATE_RJ,
    0x04: pdus.P_DATA_TF,
    0x05: pdus.A_RELEASE_RQ,
    0x06: pdus.A_RELEASE_RP,
    0x07: pdus.A_ABORT_RQ,
}


def check_pdu_stream(data):
    """Splits a stream into PDUs, decodes each with pynetdicom, rebuilds the DIMSE messages;
    returns a one-line description."""
    parts, messages, offset = [], [], 0
    pending = dm.DIMSEMessage()
    while offset < len(data):
        kind, length = struct.unpack_from(">BxI", data, offset)
        chunk = data[offset : offset + 6 + length]
        assert len(chunk) == 6 + length, "truncated PDU"
        pdu = PDU_TYPES[kind]()
        pdu.decode(chunk)
        assert pdu.encode() == chunk, f"PDU type {kind:#x} does not re-encode identically"
        if kind == 0x01:
            prim = pdu.to_primitive()
            assert prim.called_ae_title == CALLED_AE and prim.calling_ae_title == CALLING_AE
            assert prim.maximum_length_received == MAX_PDU
            assert prim.implementation_class_uid == IMPLEMENTATION_UID
            parts.append(f"A-ASSOCIATE-RQ({len(prim.presentation_context_definition_list)} pcs, "
                         f"{len(prim.user_information)} user items)")
        elif kind == 0x04:
            parts.append(f"P-DATA-TF({len(pdu.presentation_data_value_items)} pdv)")
            if pending.decode_msg(pdu.to_primitive()):
                name = type(pending).__name__.replace("_", "-")
                if pending.data_set is not None and pending.data_set.getvalue():
                    ds = pn_decode(pending.data_set, False, True)
                    assert ds.SOPInstanceUID == pending.command_set.AffectedSOPInstanceUID
                    name += f"+{len(pending.data_set.getvalue())}B data set"
                messages.append(name)
                pending = dm.DIMSEMessage()
        else:
            parts.append(pdu.__class__.__name__.replace("_", "-"))
        offset += len(chunk)
    return " ".join(parts) + (f" -> {', '.join(messages)}" if messages else "")


def make_pdu_seeds(corpus, cr_small):
    cr_bytes = encode_dataset(cr_small, implicit=False)  # our SCP prefers Explicit VR LE
    rq = associate_rq()

    store = store_rq(cr_bytes, cr_small.SOPInstanceUID)
    command = pn_encode(store.command_set, True, True)
    half = len(command) // 2
    store_split = (
        p_data_tf([(3, b"\x01" + command[:half])])  # command, not last
        + p_data_tf([(3, b"\x03" + command[half:])])  # command, last
        + p_data_tf([(3, b"\x02" + cr_bytes)])  # data set, last
    )
    # the command and the data set's first third in one PDU, the rest as two PDVs in another
    third = len(cr_bytes) // 3
    store_multi = store_rq(cr_bytes, cr_small.SOPInstanceUID, message_id=3)
    command3 = pn_encode(store_multi.command_set, True, True)
    store_multi_pdv = (
        p_data_tf([(3, b"\x03" + command3), (3, b"\x00" + cr_bytes[:third])])
        + p_data_tf([(3, b"\x00" + cr_bytes[third : 2 * third]), (3, b"\x02" + cr_bytes[2 * third :])])
    )

    identity = pp.UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.positive_response_requested = True
    identity.primary_field = b"radiographer"
    identity.secondary_field = b"chest-pa-1955"
    role = pp.SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CR_STORAGE
    role.scu_role = True
    role.scp_role = False
    ext = pp.SOPClassExtendedNegotiation()
    ext.sop_class_uid = CR_STORAGE
    # PS3.4 B.3.1: level of support 2, signature level 0, element coercion 1 (each + reserved)
    ext.service_class_application_information = b"\x02\x00\x00\x00\x01\x00"
    common = pp.SOPClassCommonExtendedNegotiation()
    common.sop_class_uid = CR_STORAGE
    common.service_class_uid = "1.2.840.10008.4.2"
    common.related_general_sop_class_identification = ["1.2.840.10008.5.1.4.1.1.1.1"]
    window = pp.AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 1
    window.maximum_number_operations_performed = 1

    seeds = [
        ("associate-rq.bin", rq),
        ("associate-echo-release.bin", rq + dimse_pdus(echo_rq(), 1) + release_rq()),
        ("associate-store-split-command-release.bin", rq + store_split + release_rq()),
        ("associate-store-multi-pdv-release.bin", rq + store_multi_pdv + release_rq()),
        ("abort-user.bin", abort_rq(0)),
        ("associate-abort-provider.bin", rq + abort_rq(2, 6)),
        ("associate-rq-user-identity-role.bin", associate_rq([role, identity])),
        ("associate-rq-extended-negotiation.bin", associate_rq([window, ext, common])),
    ]
    for name, data in seeds:
        corpus.write("pdu", name, data, check_pdu_stream(data))


# ---------------------------------------------------------------------------------------------
# command: DIMSE command sets


def make_command_seeds(corpus):
    def data_set_type_zero(cs):
        cs.CommandDataSetType = 0x0000

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "9RG1"
    query.StudyInstanceUID = ""
    query.ModalitiesInStudy = "CR"

    find = dp.C_FIND()
    find.MessageID = 7
    find.AffectedSOPClassUID = STUDY_ROOT_FIND
    find.Priority = 0x0002
    find.Identifier = BytesIO(pn_encode(query, True, True))

    store_rsp = dp.C_STORE()
    store_rsp.MessageIDBeingRespondedTo = 2
    store_rsp.AffectedSOPClassUID = CR_STORAGE
    store_rsp.AffectedSOPInstanceUID = uid(101)
    store_rsp.Status = 0xA700
    store_rsp.ErrorComment = "Out of resources: spool full"

    echo_rsp = dp.C_ECHO()
    echo_rsp.MessageIDBeingRespondedTo = 1
    echo_rsp.AffectedSOPClassUID = VERIFICATION
    echo_rsp.Status = 0x0000

    seeds = [
        ("c-echo-rq.bin", echo_rq(1)),
        ("c-store-rq.bin", store_rq(b"\x08\x00\x16\x00", uid(101), 2, data_set_type_zero)),
        ("c-store-rsp-a700-error-comment.bin", message(dm.C_STORE_RSP, store_rsp)),
        ("c-find-rq.bin", message(dm.C_FIND_RQ, find)),
        ("c-echo-rsp.bin", message(dm.C_ECHO_RSP, echo_rsp)),
    ]
    for name, msg in seeds:
        data = pn_encode(msg.command_set, True, True)
        back = pn_decode(BytesIO(data), True, True)
        first = next(iter(back))
        assert first.tag == 0x00000000 and first.value == len(data) - 12, name
        corpus.write("command", name, data,
                     f"{type(msg).__name__.replace('_', '-')} {len(back)} elements")


# ---------------------------------------------------------------------------------------------
# dataset: real data sets, re-encoded


def nested_sequences():
    """An SR-like data set, four sequence levels deep, mixing defined and undefined lengths,
    an empty sequence, an empty item and a private sequence."""

    def item(**kw):
        d = Dataset()
        for k, v in kw.items():
            setattr(d, k, v)
        return d

    def code(value, scheme, meaning):
        return item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)

    def seq(items, undefined):
        s = Sequence(items)
        for i in items:
            i.is_undefined_length_sequence_item = undefined
        return s

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    ds.SOPInstanceUID = uid(201)
    ds.Modality = "SR"
    ds.PatientName = "Nested^Sequences"
    ds.PatientID = "FUZZ-NEST"
    ds.StudyInstanceUID = uid(202)
    ds.SeriesInstanceUID = uid(203)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = seq([code("18748-4", "LN", "Diagnostic imaging report")], False)

    level4 = item(
        RelationshipType="HAS PROPERTIES",
        ValueType="NUM",
        ConceptNameCodeSequence=seq([code("C0439165", "UMLS", "Probability")], True),
        MeasuredValueSequence=seq([item(
            NumericValue="0.87",
            MeasurementUnitsCodeSequence=seq([code("1", "UCUM", "no units")], False),
        )], True),
    )
    level3 = item(
        RelationshipType="CONTAINS",
        ValueType="CODE",
        ConceptNameCodeSequence=seq([code("121071", "DCM", "Finding")], False),
        ConceptCodeSequence=seq([code("36118008", "SCT", "Pneumothorax")], False),
        ContentSequence=seq([level4, Dataset()], True),  # and an empty item
    )
    level2 = item(
        RelationshipType="CONTAINS",
        ValueType="CONTAINER",
        ContinuityOfContent="SEPARATE",
        ConceptNameCodeSequence=seq([code("111028", "DCM", "Image Library")], True),
        ContentSequence=seq([level3], False),
        ReferencedSOPSequence=seq([], False),  # an empty sequence
    )
    ds.ContentSequence = seq([level2, item(RelationshipType="HAS OBS CONTEXT", ValueType="TEXT",
                                           TextValue="pneumotriage fuzz seed")], True)
    ds["ContentSequence"].is_undefined_length = True

    private = Dataset()
    private.add_new(0x00290010, "LO", "PNEUMOTRIAGE FUZZ")
    inner = Dataset()
    inner.add_new(0x00291001, "LO", "inner")
    inner.add_new(0x00291002, "SQ", seq([item(PatientID="deep")], True))
    inner[0x00291002].is_undefined_length = True
    for elem in private:
        ds.add(elem)
    ds.add_new(0x00291010, "SQ", seq([inner], False))
    return ds


def small_ctbrain():
    """deid-data's ctbrain1 (JPEG baseline, 456x510 YBR), made small: native 8-bit grayscale,
    57x64, every other attribute (many VRs, private groups, sequences) kept."""
    import deid_data

    path = os.path.join(deid_data.__path__[0], "data", "humans", "ctbrain1.dcm")
    ds = pydicom.dcmread(path)
    rgb = ds.pixel_array.astype(np.float64)  # pydicom converts YBR_FULL_422 to RGB
    gray = rgb @ np.array([0.299, 0.587, 0.114])
    small = np.clip(np.rint(downscale(gray, 57, 64)), 0, 255).astype(np.uint8)
    del ds.PixelData
    del ds.PlanarConfiguration
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = small.shape
    ds.SOPInstanceUID = uid(211)
    ds.add_new(0x7FE00010, "OB", small.tobytes())
    ds.file_meta = FileMetaDataset()
    return ds


def make_dataset_seeds(corpus):
    sources = [
        # (seed name stem, data set, encodings)
        ("mr-small", pydicom.dcmread(get_testdata_file("MR_small.dcm")), (0, 1)),
        ("ct-small", pydicom.dcmread(get_testdata_file("CT_small.dcm")), (0, 1)),
        ("rtplan", pydicom.dcmread(get_testdata_file("rtplan.dcm")), (0, 1)),
        ("rtstruct", pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True), (0, 1)),
        ("sr-comprehensive", pydicom.dcmread(get_testdata_file("test-SR.dcm")), (0, 1)),
        ("sr-basic-text", pydicom.dcmread(get_testdata_file("reportsi.dcm")), (1,)),
        ("seg-liver-1frame", pydicom.dcmread(get_testdata_file("liver_1frame.dcm")), (1,)),
        ("deid-ctbrain-57x64", small_ctbrain(), (0, 1)),
        ("nested-sequences", nested_sequences(), (0, 1)),
    ]
    for stem, ds, encodings in sources:
        for selector in encodings:
            implicit = selector == 0
            data = encode_dataset(ds, implicit)
            back = decode_dataset(data, implicit)
            assert len(back) == len([e for e in ds if e.tag.group != 2]), stem
            assert back.SOPInstanceUID == ds.SOPInstanceUID, stem
            name = f"{'implicit' if implicit else 'explicit'}-le-{stem}.bin"
            corpus.write("dataset", name, bytes([selector]) + data,
                         f"{back.SOPClassUID.name}, {len(back)} top-level elements")


# ---------------------------------------------------------------------------------------------
# pixels: the CR chest in every transfer syntax


def downscale(a, rows, cols):
    """Area-average `a` down to rows x cols (bins of near-equal size)."""
    r = np.linspace(0, a.shape[0], rows + 1).round().astype(int)
    c = np.linspace(0, a.shape[1], cols + 1).round().astype(int)
    sums = np.add.reduceat(np.add.reduceat(a, r[:-1], axis=0), c[:-1], axis=1)
    return sums / np.outer(np.diff(r), np.diff(c))


class Chest:
    """pydicom-data's RG1_UNCR (Philips CR chest PA, 1955x1841, 15 bits stored, MONOCHROME1)."""

    def __init__(self):
        import data_store

        path = os.path.join(data_store.__path__[0], "data", "RG1_UNCR.dcm")
        self.source = pydicom.dcmread(path)
        self.full = self.source.pixel_array.astype(np.float64)
        self.source_bits = int(self.source.BitsStored)

    def image(self, rows, cols, bits):
        """Pixels at `bits` bits stored (scaled from the 15-bit original)."""
        a = downscale(self.full, rows, cols) / (1 << (self.source_bits - bits))
        return np.clip(np.rint(a), 0, (1 << bits) - 1).astype(np.uint8 if bits <= 8 else np.uint16)

    def dataset(self, pixels, bits, instance, comment):
        """The original's attributes around `pixels` (native), with a new SOP Instance UID."""
        ds = Dataset()
        for elem in self.source:
            if elem.tag not in (0x7FE00010, 0xFFFCFFFC):
                ds.add(copy.deepcopy(elem))
        ds.SOPInstanceUID = uid(instance)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.BitsAllocated = 8 if bits <= 8 else 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 0
        scale = 1 << (self.source_bits - bits)
        ds.WindowCenter = round(float(self.source.WindowCenter) / scale)
        ds.WindowWidth = round(float(self.source.WindowWidth) / scale)
        ds.ImageComments = f"RG1_UNCR downscaled to {pixels.shape[1]}x{pixels.shape[0]}; {comment}"
        ds.add_new(0x7FE00010, "OB" if bits <= 8 else "OW", pixels.astype("<u2" if bits > 8 else "u1").tobytes())
        return ds


def file_bytes(ds, ts):
    """`ds` as a Part 10 file in transfer syntax `ts` (pydicom writes it)."""
    ds = copy.deepcopy(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dcmtk(tool, args, ds, workdir):
    """Runs a dcmtk encoder on `ds` (as Explicit VR LE file); returns its output data set bytes."""
    src = os.path.join(workdir, "in.dcm")
    dst = os.path.join(workdir, "out.dcm")
    with open(src, "wb") as f:
        f.write(file_bytes(ds, EXPLICIT_LE))
    subprocess.run([tool, *args, src, dst], check=True, capture_output=True)
    with open(dst, "rb") as f:
        out = f.read()
    os.remove(src)
    os.remove(dst)
    return strip_file(out)


def j2k(ds, pixels, bits, lossless):
    """JPEG 2000 with pylibjpeg-openjpeg (raw J2K codestream), encapsulated by pydicom."""
    if lossless:
        frame = openjpeg.encode(pixels, bits_stored=bits, use_mct=False)
    else:
        frame = openjpeg.encode(pixels, bits_stored=bits, use_mct=False, compression_ratios=[24, 8])
    ds = copy.deepcopy(ds)
    elem = DataElement(0x7FE00010, "OB", encapsulate([frame]))
    elem.is_undefined_length = True
    ds[0x7FE00010] = elem
    if not lossless:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{pixels.nbytes / len(frame):.2f}"
        ds.LossyImageCompressionMethod = "ISO_15444_1"
    return encode_dataset(ds, implicit=False)


def check_pixels(selector, data, expected, lossy):
    """Reads a pixels seed back with pydicom (file meta prepended) and decodes its pixels."""
    ts = PIXEL_SYNTAXES[selector]
    ds = decode_dataset(data, implicit=(ts == IMPLICIT_LE))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    arr = ds.pixel_array
    assert arr.shape == expected.shape, (arr.shape, expected.shape)
    err = int(np.abs(arr.astype(np.int32) - expected.astype(np.int32)).max())
    assert err == 0 if not lossy else err < (1 << int(ds.BitsStored)) // 8, f"error {err}"
    return (f"{ts} {ds.Columns}x{ds.Rows} {ds.BitsAllocated}/{ds.BitsStored} bit "
            f"{ds.PhotometricInterpretation} max|err|={err}")


def make_pixel_seeds(corpus, chest):
    workdir = tempfile.mkdtemp(prefix="pt-seeds-")
    n = [300]

    def seed(name, selector, rows, cols, bits, encode, lossy=False, comment="", tweak=None):
        n[0] += 1
        pixels = chest.image(rows, cols, bits)
        ds = chest.dataset(pixels, bits, n[0], comment or PIXEL_SYNTAXES[selector])
        expected = pixels
        if tweak is not None:
            expected = tweak(ds, pixels)
        data = encode(ds, pixels, bits)
        note = check_pixels(selector, data, expected, lossy)
        corpus.write("pixels", name, bytes([selector]) + data, note)

    def native_implicit(ds, pixels, bits):
        return encode_dataset(ds, implicit=True)

    def native_explicit(ds, pixels, bits):
        return encode_dataset(ds, implicit=False)

    def j2k_lossless(ds, pixels, bits):
        return j2k(ds, pixels, bits, lossless=True)

    def j2k_lossy(ds, pixels, bits):
        return j2k(ds, pixels, bits, lossless=False)

    def with_dcmtk(tool, *args):
        return lambda ds, px, bits: dcmtk(tool, list(args), ds, workdir)

    def monochrome2_voi(ds, pixels):
        inverted = ((1 << 12) - 1 - pixels).astype(np.uint16)
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.WindowCenter = [int(np.percentile(inverted, 50)), 2048]
        ds.WindowWidth = [int(np.percentile(inverted, 98) - np.percentile(inverted, 2)), 4096]
        ds.WindowCenterWidthExplanation = ["LUNG", "FULL"]
        ds.VOILUTFunction = "LINEAR"
        ds.PixelData = inverted.astype("<u2").tobytes()
        return inverted

    def rescaled(ds, pixels):
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "0.5"
        ds.RescaleType = "US"
        return pixels

    seed("implicit-le-cr-64.bin", 0, 64, 64, 15, native_implicit)
    seed("explicit-le-cr-64.bin", 1, 64, 64, 15, native_explicit)
    seed("explicit-le-cr-96x80.bin", 1, 80, 96, 15, native_explicit, comment="non-square")
    seed("rle-cr-64-12bit.bin", 2, 64, 64, 12, with_dcmtk("dcmcrle"))
    seed("rle-cr-96x80-15bit.bin", 2, 80, 96, 15, with_dcmtk("dcmcrle"), comment="non-square")
    seed("jpeg-baseline-cr-64-8bit.bin", 3, 64, 64, 8, with_dcmtk("dcmcjpeg", "+eb", "+un"), lossy=True)
    seed("jpeg-lossless-cr-64-12bit.bin", 4, 64, 64, 12, with_dcmtk("dcmcjpeg", "+el", "+un"))
    seed("jpeg-lossless-sv1-cr-64-15bit.bin", 5, 64, 64, 15, with_dcmtk("dcmcjpeg", "+e1", "+un"))
    seed("jpegls-lossless-cr-64-12bit.bin", 6, 64, 64, 12, with_dcmtk("dcmcjpls", "+el", "+un"))
    seed("jpegls-near-lossless-cr-64-12bit.bin", 7, 64, 64, 12,
         with_dcmtk("dcmcjpls", "+en", "+md", "2", "+un"), lossy=True)
    seed("j2k-lossless-cr-64-15bit.bin", 8, 64, 64, 15, j2k_lossless)
    seed("j2k-lossy-cr-64-12bit.bin", 9, 64, 64, 12, j2k_lossy, lossy=True)
    seed("explicit-le-cr-64-monochrome2-voi.bin", 1, 64, 64, 12, native_explicit,
         comment="MONOCHROME2, two VOI windows", tweak=monochrome2_voi)
    seed("implicit-le-cr-64-rescale.bin", 0, 64, 64, 12, native_implicit,
         comment="rescale slope/intercept", tweak=rescaled)
    os.rmdir(workdir)


# ---------------------------------------------------------------------------------------------


def main():
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    root = sys.argv[1] if len(sys.argv) == 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    corpus = Corpus(root)

    chest = Chest()
    cr_small = chest.dataset(chest.image(16, 16, 12), 12, 100, "C-STORE data set of the pdu seeds")
    make_pdu_seeds(corpus, cr_small)
    make_command_seeds(corpus)
    make_dataset_seeds(corpus)
    make_pixel_seeds(corpus, chest)
    corpus.report()


if __name__ == "__main__":
    main()
