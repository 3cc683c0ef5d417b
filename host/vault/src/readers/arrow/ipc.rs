//! Arrow IPC input checked message by message before arrow-ipc decodes it:
//! arrow-ipc trusts the sizes and counts a message declares, and an
//! allocation that fails aborts the process.

use std::io::{BufReader, Read};

/// Most bytes the compressed buffers of one IPC message may declare they
/// hold once decompressed.
const MAX_DECLARED_BYTES: u64 = 1 << 30;

/// Most rows one IPC record batch (or dictionary batch) may declare. The
/// reader widens each column of a batch to 8 bytes a row or more (an i64,
/// an f64, a dictionary key), so a batch this long already takes
/// [`MAX_DECLARED_BYTES`] a column; a column of Arrow's Null type holds no
/// buffers, so nothing else bounds what its header declares.
pub(super) const MAX_BATCH_ROWS: i64 = (MAX_DECLARED_BYTES / 8) as i64;

/// The input with what was read ahead of it put back.
pub(super) type IpcInput<R> = std::io::Chain<std::io::Cursor<Vec<u8>>, BufReader<R>>;

/// `input`, a Feather v2 file or an IPC stream, as the stream arrow-ipc
/// reads, each message checked. A file is its magic padded with zeros to an
/// 8-byte boundary (or a wider one), a stream and a footer, so both read as
/// a stream from the start.
pub(super) fn checked_stream<R: Read>(
    input: R,
    max_columns: usize,
) -> std::io::Result<CheckedIpcStream<IpcInput<R>>> {
    const FILE_MAGIC: &[u8] = b"ARROW1";
    const MAX_PADDING: usize = 64;
    let mut input = BufReader::with_capacity(1 << 20, input);
    // Bytes read ahead, passed on unless they are the magic or padding:
    // a pipe may hand them over a few at a time.
    let mut ahead = read_ahead(&mut input, 8)?;
    if ahead.starts_with(FILE_MAGIC) {
        let mut skipped = 8;
        ahead = read_ahead(&mut input, 8)?;
        while skipped < MAX_PADDING && ahead == [0; 8] {
            skipped += 8;
            ahead = read_ahead(&mut input, 8)?;
        }
    }
    Ok(CheckedIpcStream {
        input: std::io::Cursor::new(ahead).chain(input),
        message: Vec::new(),
        served: 0,
        ended: false,
        max_columns,
    })
}

/// An Arrow IPC stream passed on one message at a time, each checked first:
/// arrow-ipc allocates a compressed buffer's declared decompressed size as
/// given, and an allocation that fails aborts the process.
pub(super) struct CheckedIpcStream<R> {
    input: R,
    /// The message being passed on: its framing, metadata and body.
    message: Vec<u8>,
    served: usize,
    /// Past the end-of-stream marker (a file's footer follows it).
    ended: bool,
    /// Most fields the schema may have: refused before arrow-ipc decodes it.
    max_columns: usize,
}

impl<R: Read> Read for CheckedIpcStream<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.served == self.message.len() {
            if self.ended {
                return Ok(0);
            }
            self.next_message()?;
        }
        let n = out.len().min(self.message.len() - self.served);
        out[..n].copy_from_slice(&self.message[self.served..self.served + n]);
        self.served += n;
        Ok(n)
    }
}

impl<R: Read> CheckedIpcStream<R> {
    fn next_message(&mut self) -> std::io::Result<()> {
        let invalid = |detail: String| std::io::Error::new(std::io::ErrorKind::InvalidData, detail);
        self.message.clear();
        self.served = 0;
        // A length, after a continuation marker unless the stream predates it.
        let mut length = self.read_u32()?;
        if length == Some(u32::MAX) {
            length = self.read_u32()?;
        }
        let Some(length) = length.filter(|&l| l != 0) else {
            self.ended = true;
            return Ok(());
        };
        self.read_exactly(u64::from(length))?;
        // A copy: flatbuffers wants the metadata at an aligned start.
        let metadata = self.message[self.message.len() - length as usize..].to_vec();
        let message =
            arrow_ipc::root_as_message(&metadata).map_err(|e| invalid(format!("bad message header: {e}")))?;
        let columns = message.header_as_schema().and_then(|s| s.fields()).map_or(0, |f| f.len());
        if columns > self.max_columns {
            return Err(invalid(format!(
                "the schema has {columns} columns, over the limit of {}",
                self.max_columns
            )));
        }
        let batch = message
            .header_as_record_batch()
            .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        if let Some(rows) = batch.map(|b| b.length())
            && !(0..=MAX_BATCH_ROWS).contains(&rows)
        {
            return Err(invalid(format!(
                "a record batch declares {rows} rows, outside the limit of 0 to {MAX_BATCH_ROWS}: \
                 write it in smaller batches"
            )));
        }
        let compressed = batch.is_some_and(|b| b.compression().is_some());
        let buffers: Vec<(i64, i64)> =
            batch.and_then(|b| b.buffers()).into_iter().flatten().map(|b| (b.offset(), b.length())).collect();
        let body_length =
            u64::try_from(message.bodyLength()).map_err(|_| invalid("negative body length".into()))?;
        let body_start = self.message.len();
        self.read_exactly(body_length)?;
        if compressed {
            let body = &self.message[body_start..];
            let declared: u64 = buffers
                .iter()
                .filter_map(|&(offset, length)| {
                    let start = usize::try_from(offset).ok()?;
                    let prefix = body.get(start..start.checked_add(8)?).filter(|_| length >= 8)?;
                    // -1 marks a buffer stored uncompressed.
                    u64::try_from(i64::from_le_bytes(prefix.try_into().expect("8 bytes"))).ok()
                })
                .fold(0, u64::saturating_add);
            if declared > MAX_DECLARED_BYTES {
                return Err(invalid(format!(
                    "a record batch declares {declared} bytes once decompressed, over the limit of {MAX_DECLARED_BYTES}"
                )));
            }
        }
        Ok(())
    }

    /// The next 4 bytes as a little-endian u32, also kept in `message`;
    /// `None` if the stream ends cleanly before a message.
    fn read_u32(&mut self) -> std::io::Result<Option<u32>> {
        let start = self.message.len();
        (&mut self.input).take(4).read_to_end(&mut self.message)?;
        match &self.message[start..] {
            [] if start == 0 => Ok(None),
            &[a, b, c, d] => Ok(Some(u32::from_le_bytes([a, b, c, d]))),
            _ => Err(cut_short()),
        }
    }

    /// Read `n` bytes onto `message`. It grows as bytes arrive, so a length
    /// that lies costs no more than the file holds.
    fn read_exactly(&mut self, n: u64) -> std::io::Result<()> {
        let start = self.message.len();
        (&mut self.input).take(n).read_to_end(&mut self.message)?;
        if ((self.message.len() - start) as u64) < n {
            return Err(cut_short());
        }
        Ok(())
    }
}

/// The next `n` bytes of `input`, fewer only at its end.
fn read_ahead(input: &mut impl Read, n: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    input.take(n).read_to_end(&mut out)?;
    Ok(out)
}

/// Not `UnexpectedEof`: arrow-ipc takes that, met at a message's start, for
/// the stream's end, and the truncation would go unnoticed.
fn cut_short() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "the stream ends inside a message")
}
