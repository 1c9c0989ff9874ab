//! The audit message itself: DICOM PS3.15 A.5.1's XML (the RFC 3881 schema as DICOM extends
//! it), written by hand because it is small and fixed: elements in the schema's order, every
//! value escaped, characters XML cannot carry replaced.

use std::fmt::Write;

/// A coded value (`csd-code`, `codeSystemName`, `originalText`), as every code of the message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub scheme: &'static str,
    pub meaning: &'static str,
}

/// A DICOM code (DCM), as PS3.16 defines it.
pub const fn dcm(code: &'static str, meaning: &'static str) -> Code {
    Code { code, scheme: "DCM", meaning }
}

/// An RFC 3881 code (participant object ID types such as patient number).
pub const fn rfc3881(code: &'static str, meaning: &'static str) -> Code {
    Code { code, scheme: "RFC-3881", meaning }
}

/// A code of this product's own, for what DICOM has none (PS3.16's audit context groups are
/// extensible; a private scheme designator starts with 99).
pub const fn own(code: &'static str, meaning: &'static str) -> Code {
    Code { code, scheme: "99PNEUMOTRIAGE", meaning }
}

/// An XML element being written: attributes first, then children, then the end tag.
pub struct Element<'a> {
    out: &'a mut String,
    name: &'static str,
    open: bool,
}

impl<'a> Element<'a> {
    pub fn new(out: &'a mut String, name: &'static str) -> Element<'a> {
        out.push('<');
        out.push_str(name);
        Element { out, name, open: true }
    }

    /// An attribute (before any child).
    pub fn attr(self, name: &str, value: &str) -> Element<'a> {
        debug_assert!(self.open, "attributes come before children");
        let _ = write!(self.out, " {name}=\"");
        escape_into(self.out, value);
        self.out.push('"');
        self
    }

    pub fn attr_opt(self, name: &str, value: Option<&str>) -> Element<'a> {
        match value {
            Some(v) => self.attr(name, v),
            None => self,
        }
    }

    /// A coded value's three attributes.
    pub fn code(self, code: Code) -> Element<'a> {
        self.attr("csd-code", code.code).attr("codeSystemName", code.scheme).attr("originalText", code.meaning)
    }

    /// A child element, written by `f`.
    pub fn child(mut self, name: &'static str, f: impl FnOnce(Element<'_>)) -> Element<'a> {
        self.close_start();
        f(Element::new(self.out, name));
        self
    }

    /// A child holding text only.
    pub fn text_child(mut self, name: &'static str, text: &str) -> Element<'a> {
        self.close_start();
        let _ = write!(self.out, "<{name}>");
        escape_into(self.out, text);
        let _ = write!(self.out, "</{name}>");
        self
    }

    fn close_start(&mut self) {
        if self.open {
            self.out.push('>');
            self.open = false;
        }
    }
}

impl Drop for Element<'_> {
    fn drop(&mut self) {
        if self.open {
            self.out.push_str("/>");
        } else {
            let _ = write!(self.out, "</{}>", self.name);
        }
    }
}

/// Escapes for an attribute or text, and replaces what XML 1.0 cannot hold at all (control
/// characters but tab, line feed and carriage return) with U+FFFD: values from peers may hold
/// anything. Line breaks become character references so that a message stays on one line.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Base64 (RFC 4648, with padding), for ParticipantObjectQuery and ParticipantObjectDetail.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_what_xml_cannot_hold_is_replaced() {
        let mut out = String::new();
        Element::new(&mut out, "A").attr("v", "a<b>&\"c'\n\u{1}").text_child("T", "x</T>\0");
        assert_eq!(out, "<A v=\"a&lt;b&gt;&amp;&quot;c&apos;&#10;\u{FFFD}\"><T>x&lt;/T&gt;\u{FFFD}</T></A>");
    }

    #[test]
    fn empty_elements_close_themselves() {
        let mut out = String::new();
        Element::new(&mut out, "A").child("B", |b| {
            b.code(dcm("110100", "Application Activity"));
        });
        assert_eq!(out, "<A><B csd-code=\"110100\" codeSystemName=\"DCM\" originalText=\"Application Activity\"/></A>");
    }
}
