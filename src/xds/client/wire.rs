//! A state-of-the-world `DiscoveryResponse` read in place (pure, no I/O):
//! its version, type, nonce and, per resource, the `Any`'s type URL and
//! value as slices of the received message. istiod's EDS push of one
//! changed service repeats every assignment of the mesh (10,000 in the
//! scale bench, 2.9 MB); decoding it into a `DiscoveryResponse` made two
//! heap allocations per resource (the `Any`'s type URL and value) and a
//! copy of every byte, only for the client to find all but one unchanged.
//! Read in place, a response costs one `Vec` of slices.
//!
//! Fields other than these (`canary`, `control_plane`, `resource_errors`,
//! unknown ones) are skipped as protobuf says; a field of the wrong wire
//! type, a truncated field or a string that is not UTF-8 makes the
//! message malformed, as it would for a generated decoder.

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

/// One response, borrowing the message it was read from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseView<'a> {
    pub version_info: &'a str,
    pub type_url: &'a str,
    pub nonce: &'a str,
    pub resources: Vec<AnyView<'a>>,
}

/// One `google.protobuf.Any` of a response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnyView<'a> {
    pub type_url: &'a str,
    pub value: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("DiscoveryResponse truncated at byte {0}")]
    Truncated(usize),
    #[error("DiscoveryResponse: a varint at byte {0} is too long")]
    LongVarint(usize),
    #[error("DiscoveryResponse: field {field} at byte {at} has wire type {wire_type}")]
    WireType {
        field: u64,
        wire_type: u64,
        at: usize,
    },
    #[error("DiscoveryResponse: the {0} is not UTF-8")]
    NotUtf8(&'static str),
}

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// A cursor over protobuf wire bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(WireError::Truncated(self.pos))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::LongVarint(start))
    }

    /// The next field's number and wire type, None at the end.
    fn field(&mut self) -> Result<Option<(u64, u64, usize)>, WireError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        Ok(Some((key >> 3, key & 7, at)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(WireError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| WireError::Truncated(self.pos))?;
        self.take(n)
    }

    fn skip(&mut self, field: u64, wire_type: u64, at: usize) -> Result<(), WireError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.take(4).map(drop),
            _ => Err(WireError::WireType {
                field,
                wire_type,
                at,
            }),
        }
    }

    /// A length-delimited field's bytes (an error for another wire type).
    fn len_field(&mut self, field: u64, wire_type: u64, at: usize) -> Result<&'a [u8], WireError> {
        if wire_type != LEN {
            return Err(WireError::WireType {
                field,
                wire_type,
                at,
            });
        }
        self.bytes()
    }
}

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, WireError> {
    std::str::from_utf8(b).map_err(|_| WireError::NotUtf8(what))
}

impl<'a> ResponseView<'a> {
    /// Reads an encoded `DiscoveryResponse`. As protobuf decoders do, a
    /// singular field given twice takes the last value.
    pub fn parse(msg: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(msg);
        let mut view = Self::default();
        while let Some((field, wt, at)) = r.field()? {
            match field {
                1 => view.version_info = utf8(r.len_field(field, wt, at)?, "version")?,
                2 => view.resources.push(any(r.len_field(field, wt, at)?)?),
                4 => view.type_url = utf8(r.len_field(field, wt, at)?, "type URL")?,
                5 => view.nonce = utf8(r.len_field(field, wt, at)?, "nonce")?,
                _ => r.skip(field, wt, at)?,
            }
        }
        Ok(view)
    }

    /// A decoded response seen the same way (tests, in-process callers).
    pub fn of(resp: &'a DiscoveryResponse) -> Self {
        Self {
            version_info: &resp.version_info,
            type_url: &resp.type_url,
            nonce: &resp.nonce,
            resources: resp
                .resources
                .iter()
                .map(|a| AnyView {
                    type_url: &a.type_url,
                    value: &a.value,
                })
                .collect(),
        }
    }
}

fn any(msg: &[u8]) -> Result<AnyView<'_>, WireError> {
    let mut r = Reader::new(msg);
    let mut view = AnyView {
        type_url: "",
        value: &[],
    };
    while let Some((field, wt, at)) = r.field()? {
        match field {
            1 => view.type_url = utf8(r.len_field(field, wt, at)?, "resource type URL")?,
            2 => view.value = r.len_field(field, wt, at)?,
            _ => r.skip(field, wt, at)?,
        }
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::ResourceError;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    fn response() -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: "v7".into(),
            resources: vec![
                Any {
                    type_url: "t/a".into(),
                    value: vec![1, 2, 3],
                },
                Any {
                    type_url: "t/a".into(),
                    value: vec![0xff; 300],
                },
                Any::default(),
            ],
            canary: true,
            type_url: "t/a".into(),
            nonce: "n1".into(),
            control_plane: Some(ControlPlane {
                identifier: "istiod".into(),
            }),
            resource_errors: vec![ResourceError::default()],
        }
    }

    #[test]
    fn reads_what_a_generated_decoder_reads_and_skips_the_rest() {
        let resp = response();
        let wire = resp.encode_to_vec();
        let view = ResponseView::parse(&wire).unwrap();
        assert_eq!(view, ResponseView::of(&resp));
        assert_eq!(view.resources[1].value.len(), 300);
        assert_eq!(
            ResponseView::parse(&[]).unwrap(),
            ResponseView::default(),
            "an empty message is an empty response"
        );
        // Unknown fields of every wire type are skipped.
        let mut extra = wire.clone();
        extra.extend([0x48, 0x96, 0x01]); // field 9, varint
        extra.extend([0x51, 0, 0, 0, 0, 0, 0, 0, 0]); // field 10, fixed64
        extra.extend([0x5d, 0, 0, 0, 0]); // field 11, fixed32
        assert_eq!(ResponseView::parse(&extra).unwrap(), view);
        // The last of a singular field wins.
        extra.extend([0x2a, 0x02, b'n', b'2']);
        assert_eq!(ResponseView::parse(&extra).unwrap().nonce, "n2");
    }

    #[test]
    fn malformed_messages_are_errors_never_panics() {
        let wire = response().encode_to_vec();
        for cut in 1..wire.len() {
            // Every prefix either reads (cut between fields) or is an error.
            let _ = ResponseView::parse(&wire[..cut]);
        }
        assert_eq!(
            ResponseView::parse(&wire[..wire.len() - 1]),
            Err(WireError::Truncated(wire.len() - 1))
        );
        assert!(matches!(
            ResponseView::parse(&[0x08, 0x01]), // version as a varint
            Err(WireError::WireType { field: 1, .. })
        ));
        assert!(matches!(
            ResponseView::parse(&[0x0b]), // a group
            Err(WireError::WireType { wire_type: 3, .. })
        ));
        assert_eq!(
            ResponseView::parse(&[0x2a, 0x01, 0xff]),
            Err(WireError::NotUtf8("nonce"))
        );
        assert_eq!(
            ResponseView::parse(&[0x12, 0x03, 0x0a, 0x01, 0xc0]),
            Err(WireError::NotUtf8("resource type URL"))
        );
        assert_eq!(
            ResponseView::parse(&[
                0x08 | 2,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0x01
            ]),
            Err(WireError::LongVarint(1))
        );
        assert_eq!(
            ResponseView::parse(&[0x0a, 0x05, b'a']),
            Err(WireError::Truncated(2))
        );
    }
}
