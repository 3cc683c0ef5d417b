//! The at-rest encoding of one column of one chunk: typed little-endian
//! buffers, then LZ4. Sealing happens after this, opening before it.
//!
//! Layout before compression:
//! `FORMAT ‖ type tag ‖ rows: u32 ‖ has validity: u8 ‖ [validity bitmap] ‖ values`,
//! where values are 8 bytes per row (int, float, timestamp), a bitmap (bool)
//! or, for text, `entries: u32 ‖ entry lengths: u32 each ‖ entry bytes ‖
//! code width: u8 ‖ codes`. Decoding checks every length: a sealed segment
//! only ever comes from this encoder, but the decoder does not rely on it.

use crate::schema::ColumnType;
use crate::table::{Column, ColumnData};

const FORMAT: u8 = 1;

/// Largest decoded segment accepted: well above any chunk the builder makes.
const MAX_SEGMENT_BYTES: usize = 1 << 30;

/// Why a segment did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column segment is malformed: {0}")]
pub struct SegmentError(pub &'static str);

fn tag(column_type: ColumnType) -> u8 {
    match column_type {
        ColumnType::Int => 1,
        ColumnType::Float => 2,
        ColumnType::Bool => 3,
        ColumnType::Text => 4,
        ColumnType::Timestamp => 5,
    }
}

fn type_of(data: &ColumnData) -> ColumnType {
    match data {
        ColumnData::Int(_) => ColumnType::Int,
        ColumnData::Float(_) => ColumnType::Float,
        ColumnData::Bool(_) => ColumnType::Bool,
        ColumnData::Timestamp(_) => ColumnType::Timestamp,
        ColumnData::Text { .. } => ColumnType::Text,
    }
}

/// The plain (uncompressed) encoding of `column` holding `rows` rows.
pub fn encode_plain(column: &Column, rows: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + rows * 8);
    out.push(FORMAT);
    out.push(tag(type_of(&column.data)));
    out.extend_from_slice(&(rows as u32).to_le_bytes());
    match &column.validity {
        Some(bits) => {
            out.push(1);
            out.extend_from_slice(bits);
        }
        None => out.push(0),
    }
    match &column.data {
        ColumnData::Int(v) | ColumnData::Timestamp(v) => {
            v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        }
        ColumnData::Float(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        ColumnData::Bool(v) => {
            let mut bits = vec![0u8; rows.div_ceil(8)];
            for (i, _) in v.iter().enumerate().filter(|(_, b)| **b) {
                bits[i / 8] |= 1 << (i % 8);
            }
            out.extend_from_slice(&bits);
        }
        ColumnData::Text { entries, codes } => {
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            for entry in entries.iter() {
                out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
            }
            for entry in entries.iter() {
                out.extend_from_slice(entry.as_bytes());
            }
            let width = code_width(entries.len());
            out.push(width as u8);
            for &code in codes {
                out.extend_from_slice(&code.to_le_bytes()[..width]);
            }
        }
    }
    out
}

/// Bytes per code for a dictionary of `entries`.
fn code_width(entries: usize) -> usize {
    match entries {
        0..=0x100 => 1,
        0x101..=0x1_0000 => 2,
        _ => 4,
    }
}

/// Compress a plain encoding for storage.
pub fn compress(plain: &[u8]) -> Vec<u8> {
    lz4_flex::compress_prepend_size(plain)
}

/// Decompress a stored segment.
pub fn decompress(stored: &[u8]) -> Result<Vec<u8>, SegmentError> {
    let size = stored.get(..4).ok_or(SegmentError("shorter than its size prefix"))?;
    if u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize > MAX_SEGMENT_BYTES {
        return Err(SegmentError("decoded size too large"));
    }
    lz4_flex::decompress_size_prepended(stored).map_err(|_| SegmentError("bad compression"))
}

/// A bounds-checked cursor over a plain encoding.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SegmentError> {
        if self.0.len() < n {
            return Err(SegmentError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SegmentError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, SegmentError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn words(&mut self, rows: usize) -> Result<impl Iterator<Item = [u8; 8]> + 'a, SegmentError> {
        let bytes = self.take(rows.checked_mul(8).ok_or(SegmentError("too many rows"))?)?;
        Ok(bytes.chunks_exact(8).map(|w| w.try_into().expect("8 bytes")))
    }
}

/// Decode a plain encoding that must hold `rows` rows of `column_type`.
pub fn decode_plain(plain: &[u8], column_type: ColumnType, rows: usize) -> Result<Column, SegmentError> {
    let (values, validity) = decode_borrowed(plain, column_type, rows)?;
    let data = match values {
        Decoded::Values(data) => data,
        Decoded::Text { entries, codes } => {
            ColumnData::Text { entries: entries.into_iter().collect(), codes }
        }
    };
    Ok(Column { data, validity })
}

/// A decoded segment whose dictionary entries still point into the plain
/// bytes: a scan maps them onto its own dictionary without copying each.
pub(crate) enum Decoded<'a> {
    /// Any type but text.
    Values(ColumnData),
    Text {
        entries: Vec<&'a str>,
        codes: Vec<u32>,
    },
}

/// [`decode_plain`], the entries borrowed; also returns the validity bitmap.
pub(crate) fn decode_borrowed(
    plain: &[u8],
    column_type: ColumnType,
    rows: usize,
) -> Result<(Decoded<'_>, Option<Vec<u8>>), SegmentError> {
    let mut c = Cursor(plain);
    if c.u8()? != FORMAT {
        return Err(SegmentError("unknown format"));
    }
    if c.u8()? != tag(column_type) {
        return Err(SegmentError("column type differs from the schema"));
    }
    if c.u32()? as usize != rows {
        return Err(SegmentError("row count differs from the chunk's"));
    }
    let bitmap = rows.div_ceil(8);
    let validity = match c.u8()? {
        0 => None,
        1 => Some(c.take(bitmap)?.to_vec()),
        _ => return Err(SegmentError("bad validity flag")),
    };
    let data = match column_type {
        ColumnType::Int => Decoded::Values(ColumnData::Int(c.words(rows)?.map(i64::from_le_bytes).collect())),
        ColumnType::Timestamp => {
            Decoded::Values(ColumnData::Timestamp(c.words(rows)?.map(i64::from_le_bytes).collect()))
        }
        ColumnType::Float => {
            Decoded::Values(ColumnData::Float(c.words(rows)?.map(f64::from_le_bytes).collect()))
        }
        ColumnType::Bool => {
            let bits = c.take(bitmap)?;
            Decoded::Values(ColumnData::Bool((0..rows).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect()))
        }
        ColumnType::Text => {
            let count = c.u32()? as usize;
            let lengths = c.take(count.checked_mul(4).ok_or(SegmentError("too many entries"))?)?;
            let mut entries = Vec::with_capacity(count);
            for length in lengths.chunks_exact(4) {
                let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
                let text =
                    std::str::from_utf8(c.take(length)?).map_err(|_| SegmentError("text is not UTF-8"))?;
                entries.push(text);
            }
            let width = c.u8()? as usize;
            if width != code_width(count) {
                return Err(SegmentError("bad code width"));
            }
            let raw = c.take(rows.checked_mul(width).ok_or(SegmentError("too many rows"))?)?;
            let codes: Vec<u32> = match width {
                1 => raw.iter().map(|&b| u32::from(b)).collect(),
                2 => raw.chunks_exact(2).map(|w| u32::from(u16::from_le_bytes([w[0], w[1]]))).collect(),
                _ => {
                    raw.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes"))).collect()
                }
            };
            if codes.iter().any(|&code| code as usize >= count) {
                return Err(SegmentError("code outside the dictionary"));
            }
            Decoded::Text { entries, codes }
        }
    };
    if !c.0.is_empty() {
        return Err(SegmentError("trailing bytes"));
    }
    Ok((data, validity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Dictionary;

    fn roundtrip(column: Column, column_type: ColumnType, rows: usize) {
        let stored = compress(&encode_plain(&column, rows));
        let plain = decompress(&stored).unwrap();
        assert_eq!(decode_plain(&plain, column_type, rows).unwrap(), column);
    }

    #[test]
    fn every_type_roundtrips() {
        roundtrip(
            Column { data: ColumnData::Int(vec![1, -2, i64::MAX]), validity: None },
            ColumnType::Int,
            3,
        );
        roundtrip(
            Column { data: ColumnData::Float(vec![1.5, 0.0, -3.25]), validity: Some(vec![0b101]) },
            ColumnType::Float,
            3,
        );
        roundtrip(
            Column {
                data: ColumnData::Bool(vec![true, false, true, true, false, false, true, false, true]),
                validity: None,
            },
            ColumnType::Bool,
            9,
        );
        roundtrip(
            Column { data: ColumnData::Timestamp(vec![0, 1_700_000_000_000_000]), validity: None },
            ColumnType::Timestamp,
            2,
        );
        let many: Vec<String> = (0..70_000).map(|i| format!("v{i}")).collect();
        for entries in
            [vec!["south".to_owned(), "".to_owned(), "Zürich".to_owned()], many[..300].to_vec(), many.clone()]
        {
            let entries: Dictionary = entries.into_iter().collect();
            let n = entries.len() as u32;
            let codes = (0..n).rev().chain([0, n - 1]).collect::<Vec<_>>();
            let rows = codes.len();
            roundtrip(
                Column { data: ColumnData::Text { entries, codes }, validity: None },
                ColumnType::Text,
                rows,
            );
        }
    }

    #[test]
    fn malformed_segments_are_errors_not_panics() {
        let column = Column {
            data: ColumnData::Text { entries: ["a", "bc"].into_iter().collect(), codes: vec![0, 1, 1] },
            validity: Some(vec![0b011]),
        };
        let plain = encode_plain(&column, 3);
        assert!(decode_plain(&plain, ColumnType::Int, 3).is_err(), "type differs");
        assert!(decode_plain(&plain, ColumnType::Text, 4).is_err(), "rows differ");
        for cut in 0..plain.len() {
            assert!(decode_plain(&plain[..cut], ColumnType::Text, 3).is_err(), "truncated at {cut}");
        }
        let mut bad_code = plain.clone();
        *bad_code.last_mut().unwrap() = 9;
        assert_eq!(
            decode_plain(&bad_code, ColumnType::Text, 3),
            Err(SegmentError("code outside the dictionary"))
        );
        let mut extra = plain;
        extra.push(0);
        assert_eq!(decode_plain(&extra, ColumnType::Text, 3), Err(SegmentError("trailing bytes")));
        assert!(decompress(&[0xff, 0xff, 0xff, 0x7f, 1, 2]).is_err(), "huge size prefix");
        assert!(decompress(&[1]).is_err());
    }
}
