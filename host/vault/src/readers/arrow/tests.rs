use std::sync::Arc;

use arrow_array::types::{Int32Type, UInt32Type};
use arrow_array::{
    ArrayRef, BooleanArray, DictionaryArray, Float32Array, Int32Array, LargeStringArray, ListArray,
    NullArray, StringArray, StringViewArray, TimestampNanosecondArray, UInt64Array,
};
use arrow_schema::{Field, Schema as ArrowSchema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::ipc::MAX_BATCH_ROWS;
use super::*;
use crate::InputFormat;
use crate::readers::shared::InputLimits;
use crate::table::ColumnData;
use crate::timestamp::TIMESTAMP_RANGE;
use crate::{CsvReader, IngestError};

/// Three batches of every admitted type, some of them null.
fn batches() -> Vec<RecordBatch> {
    let schema = Arc::new(ArrowSchema::new(vec![
        Field::new("customer", DataType::Int32, false),
        Field::new(
            "segment",
            DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
            true,
        ),
        Field::new("visits", DataType::UInt64, true),
        Field::new("spend", DataType::Float32, true),
        Field::new("amount", DataType::Decimal128(10, 2), true),
        Field::new("seen", DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())), true),
        Field::new("day", DataType::Date32, true),
        Field::new("member", DataType::Boolean, true),
        Field::new("city", DataType::LargeUtf8, true),
        Field::new("note", DataType::Utf8View, true),
        Field::new("unused", DataType::Null, true),
    ]));
    (0..3)
        .map(|b| {
            let rows = 0..4i32;
            let ids: Vec<i32> = rows.clone().map(|r| b * 4 + r).collect();
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int32Array::from(ids.clone())),
                Arc::new(DictionaryArray::<UInt32Type>::new(
                    vec![Some(1), None, Some(0), Some(1)].into(),
                    Arc::new(StringArray::from(vec!["retail", "business"])),
                )),
                Arc::new(UInt64Array::from(vec![Some(1), None, Some(u64::from(u32::MAX)), Some(3)])),
                Arc::new(Float32Array::from(vec![Some(1.5), Some(f32::NAN), None, Some(-2.25)])),
                Arc::new(
                    arrow_array::Decimal128Array::from(vec![Some(12345), None, Some(-5), Some(0)])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
                Arc::new(
                    TimestampNanosecondArray::from(vec![Some(1_500), Some(-1_500), None, Some(0)])
                        .with_timezone("UTC"),
                ),
                Arc::new(arrow_array::Date32Array::from(vec![Some(1), None, Some(-1), Some(0)])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None, Some(true)])),
                Arc::new(LargeStringArray::from(vec![Some("Delft"), None, Some(""), Some("Delft")])),
                Arc::new(StringViewArray::from(vec![
                    Some("a rather long note, not inlined"),
                    None,
                    Some("x"),
                    None,
                ])),
                Arc::new(NullArray::new(4)),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        })
        .collect()
}

fn options(chunk_rows: usize) -> IngestOptions {
    IngestOptions { chunk_rows, ..IngestOptions::entity("customer") }
}

fn parquet_file(batches: &[RecordBatch], compression: Compression) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    let properties = WriterProperties::builder().set_compression(compression).build();
    let mut writer =
        ArrowWriter::try_new(file.reopen().unwrap(), batches[0].schema(), Some(properties)).unwrap();
    for batch in batches {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
    file
}

fn ipc_bytes(batches: &[RecordBatch], file_format: bool) -> Vec<u8> {
    ipc_bytes_compressed(batches, file_format, Some(arrow_ipc::CompressionType::LZ4_FRAME))
}

fn ipc_bytes_compressed(
    batches: &[RecordBatch],
    file_format: bool,
    compression: Option<arrow_ipc::CompressionType>,
) -> Vec<u8> {
    use arrow_ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};
    let options = IpcWriteOptions::default().try_with_compression(compression).unwrap();
    let mut out = Vec::new();
    if file_format {
        let mut writer = FileWriter::try_new_with_options(&mut out, &batches[0].schema(), options).unwrap();
        batches.iter().for_each(|b| writer.write(b).unwrap());
        writer.finish().unwrap();
    } else {
        let mut writer = StreamWriter::try_new_with_options(&mut out, &batches[0].schema(), options).unwrap();
        batches.iter().for_each(|b| writer.write(b).unwrap());
        writer.finish().unwrap();
    }
    out
}

fn read_all(reader: &mut dyn ChunkReader) -> Result<Vec<Table>, IngestError> {
    let mut tables = Vec::new();
    while let Some(table) = reader.next_chunk()? {
        tables.push(table);
    }
    Ok(tables)
}

#[test]
fn every_format_and_codec_reads_the_same_typed_rows() {
    let batches = batches();
    let mut inputs: Vec<(String, Box<dyn ChunkReader>)> = Vec::new();
    for compression in [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::ZSTD(ZstdLevel::default()),
        Compression::LZ4_RAW,
        Compression::GZIP(GzipLevel::default()),
    ] {
        let file = parquet_file(&batches, compression);
        let reader = ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options(5)).unwrap();
        inputs.push((format!("parquet {compression:?}"), Box::new(reader)));
    }
    for file_format in [true, false] {
        let bytes = ipc_bytes(&batches, file_format);
        let reader = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(5)).unwrap();
        inputs.push((format!("ipc file={file_format}"), Box::new(reader)));
    }
    for (name, mut reader) in inputs {
        let types: Vec<_> = reader.schema().fields.iter().map(|f| f.column_type).collect();
        use ColumnType::*;
        assert_eq!(
            types,
            [Text, Text, Int, Float, Float, Timestamp, Timestamp, Bool, Text, Text, Text],
            "{name}"
        );
        let tables = read_all(&mut *reader).unwrap();
        assert_eq!(tables.iter().map(|t| t.rows).collect::<Vec<_>>(), [5, 5, 2], "{name}: cut at 5 rows");
        let first = &tables[0];
        let ColumnData::Text { entries, codes } = &first.columns[0].data else { panic!() };
        assert_eq!(entries, &["0", "1", "2", "3", "4"], "{name}: an int entity is stored as text");
        assert_eq!(codes, &[0, 1, 2, 3, 4]);
        let ColumnData::Text { entries, codes } = &first.columns[1].data else { panic!() };
        assert_eq!(entries, &["business", "", "retail"], "{name}");
        assert_eq!(codes, &[0, 1, 2, 0, 0], "{name}");
        assert!(!first.columns[1].is_valid(1));
        assert_eq!(first.columns[2].data, ColumnData::Int(vec![1, 0, 4_294_967_295, 3, 1]), "{name}");
        assert_eq!(first.columns[3].data, ColumnData::Float(vec![1.5, 0.0, 0.0, -2.25, 1.5]), "{name}");
        assert!(!first.columns[3].is_valid(1) && !first.columns[3].is_valid(2), "{name}: NaN is a null");
        assert_eq!(first.columns[4].data, ColumnData::Float(vec![123.45, 0.0, -0.05, 0.0, 123.45]), "{name}");
        assert_eq!(
            first.columns[5].data,
            ColumnData::Timestamp(vec![1, -2, 0, 0, 1]),
            "{name}: ns floor to µs"
        );
        assert_eq!(
            first.columns[6].data,
            ColumnData::Timestamp(vec![86_400_000_000, 0, -86_400_000_000, 0, 86_400_000_000]),
            "{name}"
        );
        assert_eq!(first.columns[7].data, ColumnData::Bool(vec![true, false, false, true, true]), "{name}");
        let ColumnData::Text { entries, .. } = &first.columns[8].data else { panic!() };
        assert_eq!(entries, &["Delft", ""], "{name}: a null and the empty value share an entry");
        assert!(first.columns[8].is_valid(2) && !first.columns[8].is_valid(1), "{name}: \"\" is a value");
        assert!((0..5).all(|r| !first.columns[10].is_valid(r)), "{name}");
    }
}

#[test]
fn a_type_the_tenant_gives_converts_through_text() {
    let options = IngestOptions {
        types: vec![("visits".into(), ColumnType::Float), ("member".into(), ColumnType::Text)],
        identifiers: vec!["spend".into()],
        ..options(100)
    };
    let bytes = ipc_bytes(&batches(), false);
    let mut reader = ArrowReader::ipc("in.arrows", std::io::Cursor::new(bytes), &options).unwrap();
    let table = reader.next_chunk().unwrap().unwrap();
    assert_eq!(table.columns[2].data, ColumnData::Float([1.0, 0.0, 4_294_967_295.0, 3.0].repeat(3)));
    let ColumnData::Text { entries, .. } = &table.columns[3].data else { panic!("an identifier is text") };
    assert_eq!(entries, &["1.5", "", "-2.25"]);
    let ColumnData::Text { entries, .. } = &table.columns[7].data else { panic!() };
    assert_eq!(entries, &["true", "false", ""]);

    let options = IngestOptions { types: vec![("city".into(), ColumnType::Int)], ..options };
    let bytes = ipc_bytes(&batches(), true);
    let mut reader = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options).unwrap();
    let err = reader.next_chunk().unwrap_err().to_string();
    assert_eq!(err, "in.arrow, row 1, column `city`: expected int, found `Delft`");
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

/// Arrow text is trimmed as CSV text is: a whitespace entity is empty.
#[test]
fn arrow_text_is_trimmed_as_csv_text_is() {
    let padded = batch(vec![
        ("customer", Arc::new(StringArray::from(vec![" a", "a ", "b"]))),
        ("city", Arc::new(LargeStringArray::from(vec![" Delft ", "Delft", "Leiden\t"]))),
        (
            "note",
            Arc::new(DictionaryArray::<UInt32Type>::new(
                vec![0, 0, 1].into(),
                Arc::new(StringArray::from(vec![" x ", "y"])),
            )),
        ),
    ]);
    let csv = "customer,city,note\n a, Delft , x \na ,Delft, x \nb,Leiden\t,y\n";
    let expected = CsvReader::new("in.csv", csv.as_bytes(), &options(100)).unwrap().next_chunk().unwrap();
    let expected = expected.unwrap().columns;
    let text = |data: &ColumnData| match data {
        ColumnData::Text { entries, codes } => (entries.iter().map(str::to_owned).collect(), codes.clone()),
        other => panic!("{other:?}"),
    };
    for file_format in [true, false] {
        let bytes = ipc_bytes(std::slice::from_ref(&padded), file_format);
        let tables = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap();
        let columns = &tables[0].columns;
        let (entries, codes): (Vec<String>, Vec<u32>) = text(&columns[0].data);
        assert_eq!((entries, codes), (vec!["a".to_owned(), "b".into()], vec![0, 0, 1]), "one entity");
        for (column, expected) in columns.iter().zip(&expected) {
            assert_eq!(text(&column.data), text(&expected.data), "as CSV reads it");
        }
    }
    let blank = batch(vec![("customer", Arc::new(StringArray::from(vec!["a", " \t "])))]);
    let bytes = ipc_bytes(&[blank], false);
    let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
        .and_then(|mut reader| read_all(&mut reader))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "in.arrow, row 2, column `customer`: the entity column is empty");
}

/// A timestamp the CSV reader could not read back from an export (its
/// year has more or fewer than four digits) is refused, as from CSV.
#[test]
fn a_timestamp_outside_the_years_0000_to_9999_is_refused() {
    let (first, last) = (*TIMESTAMP_RANGE.start(), *TIMESTAMP_RANGE.end());
    let read = |seen: Vec<i64>| {
        let ids: Vec<String> = (0..seen.len()).map(|i| format!("c{i}")).collect();
        let seen = arrow_array::TimestampMicrosecondArray::from(seen).with_timezone("UTC");
        let bytes = ipc_bytes(
            &[batch(vec![("customer", Arc::new(StringArray::from(ids))), ("seen", Arc::new(seen))])],
            true,
        );
        ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
            .and_then(|mut reader| read_all(&mut reader))
    };
    let tables = read(vec![first, 0, last]).unwrap();
    assert_eq!(tables[0].columns[1].data, ColumnData::Timestamp(vec![first, 0, last]));
    let err = read(vec![0, last + 1]).unwrap_err().to_string();
    assert_eq!(
        err,
        "in.arrow, row 2, column `seen`: timestamp 10000-01-01T00:00:00Z is outside the years 0000 to 9999"
    );
    let err = read(vec![first - 1]).unwrap_err().to_string();
    assert!(err.starts_with("in.arrow, row 1, column `seen`: timestamp "), "{err}");
    assert!(err.ends_with(" is outside the years 0000 to 9999"), "{err}");
}

/// Entity and identifier values are the file's own, not their f64
/// widening; whether a value fits is asked only of an int or float column.
#[test]
fn an_identifier_keeps_the_value_the_file_holds() {
    let decimal = |values: Vec<i128>, scale: i8| -> ArrayRef {
        Arc::new(arrow_array::Decimal128Array::from(values).with_precision_and_scale(20, scale).unwrap())
    };
    let wide = batch(vec![
        // Equal as f64: two entities would merge.
        ("customer", decimal(vec![12_345_678_901_234_567_890, 12_345_678_901_234_567_891], 0)),
        ("account", Arc::new(UInt64Array::from(vec![u64::MAX, 7]))),
        ("score", Arc::new(Float32Array::from(vec![1.1, 2.5]))),
        ("units", decimal(vec![10_000, 900_719_925_474_099_300], 2)),
        ("visits", Arc::new(UInt64Array::from(vec![u64::MAX, 7]))),
    ]);
    let typed = IngestOptions {
        identifiers: vec!["account".into(), "score".into()],
        types: vec![("units".into(), ColumnType::Int), ("visits".into(), ColumnType::Float)],
        ..options(100)
    };
    let parquet = parquet_file(std::slice::from_ref(&wide), Compression::SNAPPY);
    let mut inputs: Vec<(String, Box<dyn ChunkReader>)> = vec![(
        "parquet".into(),
        Box::new(ArrowReader::parquet("in.parquet", parquet.reopen().unwrap(), &typed).unwrap()),
    )];
    for file_format in [true, false] {
        let bytes = ipc_bytes(std::slice::from_ref(&wide), file_format);
        let reader = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &typed).unwrap();
        inputs.push((format!("ipc file={file_format}"), Box::new(reader)));
    }
    for (name, mut reader) in inputs {
        let table = read_all(&mut *reader).unwrap_or_else(|e| panic!("{name}: {e}")).remove(0);
        let text = |column: usize| match &table.columns[column].data {
            ColumnData::Text { entries, .. } => entries.iter().map(str::to_owned).collect::<Vec<_>>(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(text(0), ["12345678901234567890", "12345678901234567891"], "{name}");
        assert_eq!(text(1), ["18446744073709551615", "7"], "{name}");
        assert_eq!(text(2), ["1.1", "2.5"], "{name}");
        assert_eq!(table.columns[3].data, ColumnData::Int(vec![100, 9_007_199_254_740_993]), "{name}");
        assert_eq!(table.columns[4].data, ColumnData::Float(vec![u64::MAX as f64, 7.0]), "{name}");
    }

    let fraction = batch(vec![
        ("customer", Arc::new(StringArray::from(vec!["a", "b"]))),
        ("units", decimal(vec![100, 12_345], 2)),
    ]);
    let units = IngestOptions { types: vec![("units".into(), ColumnType::Int)], ..options(100) };
    let bytes = ipc_bytes(&[fraction], false);
    let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &units)
        .and_then(|mut reader| read_all(&mut reader))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "in.arrow, row 2, column `units`: expected int, found `123.45`");
}

#[test]
fn bad_input_names_the_file_row_and_column() {
    let ids = || -> ArrayRef { Arc::new(StringArray::from(vec!["a", "b", "c"])) };
    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)]), None, None]);
    let cases: Vec<(RecordBatch, &str)> = vec![
        (
            batch(vec![("customer", ids()), ("tags", Arc::new(list))]),
            "in.arrow, column `tags`: its type List(Int32) is not one kanon stores",
        ),
        (
            batch(vec![("customer", ids()), ("n", Arc::new(UInt64Array::from(vec![1, 2, u64::MAX])))]),
            "in.arrow, row 3, column `n`: 18446744073709551615 does not fit a 64-bit int",
        ),
        (
            batch(vec![("customer", Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])))]),
            "in.arrow, row 2, column `customer`: the entity column is empty",
        ),
        (
            batch(vec![("customer", Arc::new(StringArray::from(vec!["a", "b", ""])))]),
            "in.arrow, row 3, column `customer`: the entity column is empty",
        ),
        (
            batch(vec![
                ("customer", ids()),
                ("x", Arc::new(arrow_array::Float64Array::from(vec![1.0, f64::INFINITY, 2.0]))),
            ]),
            "in.arrow, row 2, column `x`: expected float, found `inf`",
        ),
        (
            batch(vec![("customer", ids()), ("customer", ids())]),
            "in.arrow, column `customer`: the column name appears twice",
        ),
        (batch(vec![("id", ids())]), "in.arrow, column `customer`: no such column; the columns are: id"),
        (
            batch(vec![("customer", Arc::new(StringArray::from(Vec::<&str>::new())))]),
            "in.arrow: the file is empty: no rows",
        ),
    ];
    for (batch, expected) in cases {
        for file_format in [true, false] {
            let bytes = ipc_bytes(std::slice::from_ref(&batch), file_format);
            let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
                .and_then(|mut reader| read_all(&mut reader))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{err}\nwanted: {expected}");
        }
    }
}

#[test]
fn a_damaged_file_is_refused_clearly() {
    let good = parquet_file(&batches(), Compression::SNAPPY);
    let bytes = std::fs::read(good.path()).unwrap();
    let open = |bytes: &[u8]| {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options(100))
            .and_then(|mut reader| read_all(&mut reader))
    };
    for damaged in [&bytes[..bytes.len() - 3], &bytes[..0], b"customer,x\n1,2\n"] {
        let err = open(damaged).unwrap_err().to_string();
        assert!(err.starts_with("in.parquet: not a readable Parquet file"), "{err}");
    }
    // A flipped byte inside the data pages: the page fails to decode.
    let mut flipped = bytes.clone();
    for byte in &mut flipped[4..bytes.len() / 2] {
        *byte ^= 0x5a;
    }
    let err = open(&flipped).unwrap_err().to_string();
    assert!(err.starts_with("in.parquet"), "{err}");

    let ipc = ipc_bytes(&batches(), true);
    for damaged in [&ipc[..ipc.len() / 2], &ipc[..0], b"ARROW1\0\0garbage".as_slice()] {
        let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(damaged.to_vec()), &options(100))
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("in.arrow"), "{err}");
    }
    let err = crate::open_stream(InputFormat::Parquet, "-", std::io::empty(), &options(1)).err().unwrap();
    assert!(err.to_string().contains("give a file, not a stream"), "{err}");
}

/// A Feather file through a pipe: its magic arrives a few bytes at a time.
#[test]
fn a_file_read_a_few_bytes_at_a_time_is_recognised() {
    struct Trickle(std::io::Cursor<Vec<u8>>, usize);
    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = out.len().min(self.1);
            self.0.read(&mut out[..n])
        }
    }
    for file_format in [true, false] {
        for step in [1, 3, 7] {
            let bytes = ipc_bytes(&batches(), file_format);
            let input = Trickle(std::io::Cursor::new(bytes), step);
            let tables = ArrowReader::ipc("in.arrow", input, &options(100))
                .and_then(|mut reader| read_all(&mut reader))
                .unwrap_or_else(|e| panic!("file={file_format}, {step} bytes a read: {e}"));
            assert_eq!(tables.iter().map(|t| t.rows).sum::<usize>(), 12);
        }
    }
    // A file is handed over unbuffered: the reader buffers it.
    let file = tempfile::Builder::new().suffix(".feather").tempfile().unwrap();
    std::fs::write(file.path(), ipc_bytes(&batches(), true)).unwrap();
    let mut reader = crate::open_file(file.path(), None, &options(5)).unwrap();
    assert_eq!(read_all(&mut *reader).unwrap().iter().map(|t| t.rows).collect::<Vec<_>>(), [5, 5, 2]);
}

/// arrow-rs asserts on the keys of a dictionary with no values, which is
/// how an all-null dictionary column (or an empty batch) is written.
#[test]
fn an_all_null_dictionary_column_reads_as_nulls() {
    let schema = Arc::new(ArrowSchema::new(vec![
        Field::new("customer", DataType::Utf8, false),
        Field::new(
            "segment",
            DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8)),
            true,
        ),
    ]));
    let batch = |ids: Vec<&str>| {
        let keys: Vec<Option<u32>> = vec![None; ids.len()];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(DictionaryArray::<UInt32Type>::new(
                keys.into(),
                Arc::new(StringArray::from(Vec::<&str>::new())),
            )),
        ];
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    };
    let batches = [batch(vec![]), batch(vec!["a", "b", "c"])];
    let parquet = parquet_file(&batches, Compression::SNAPPY);
    let mut inputs: Vec<(String, Box<dyn ChunkReader>)> = vec![(
        "parquet".into(),
        Box::new(ArrowReader::parquet("in.parquet", parquet.reopen().unwrap(), &options(100)).unwrap()),
    )];
    for file_format in [true, false] {
        let bytes = ipc_bytes(&batches, file_format);
        let reader = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100)).unwrap();
        inputs.push((format!("ipc file={file_format}"), Box::new(reader)));
    }
    for (name, mut reader) in inputs {
        let tables = read_all(&mut *reader).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tables.len(), 1, "{name}");
        assert_eq!(tables[0].rows, 3, "{name}");
        assert!((0..3).all(|row| !tables[0].columns[1].is_valid(row)), "{name}: every segment is null");
    }
}

/// Files with bytes overwritten at random (a fixed seed): each is read
/// to the end or refused with an error; arrow-rs's panics on some of them
/// come back as errors. Uncompressed, because arrow-ipc trusts a
/// compressed buffer's declared size (SECURITY.md).
#[test]
fn damaged_files_are_errors_never_panics() {
    let batches = batches();
    let parquet = std::fs::read(parquet_file(&batches, Compression::UNCOMPRESSED).path()).unwrap();
    let ipc = ipc_bytes_compressed(&batches, true, None);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut decoder_failures = 0;
    for round in 0..600 {
        let mut bytes = if round % 2 == 0 { parquet.clone() } else { ipc.clone() };
        for _ in 0..1 + random() % 8 {
            let at = random() as usize % bytes.len();
            bytes[at] = random() as u8;
        }
        let read = if round % 2 == 0 {
            std::fs::write(file.path(), &bytes).unwrap();
            ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options(5))
        } else {
            ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(5))
        };
        if let Err(e) = read.and_then(|mut reader| read_all(&mut reader)) {
            decoder_failures += usize::from(e.detail.contains("its decoder failed"));
        }
    }
    assert!(decoder_failures > 0, "the seed no longer reaches a decoder panic; pick another");
}

/// A forged batch header declares more rows than the file holds; a
/// column of the Null type has no buffers that would show it.
#[test]
fn a_batch_declaring_too_many_rows_is_refused() {
    const ROWS: i64 = 12_345;
    let nothing = batch(vec![("customer", Arc::new(NullArray::new(ROWS as usize)))]);
    for file_format in [false, true] {
        let mut bytes = ipc_bytes(std::slice::from_ref(&nothing), file_format);
        let (declared, forged) = (ROWS.to_le_bytes(), (MAX_BATCH_ROWS * 2).to_le_bytes());
        let at: Vec<usize> = (0..bytes.len() - 8).filter(|&i| bytes[i..i + 8] == declared).collect();
        assert!(!at.is_empty() && at.len() <= 3, "the batch's and its column's length: {at:?}");
        for i in at {
            bytes[i..i + 8].copy_from_slice(&forged);
        }
        let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100))
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("in.arrow: ")
                && err
                    .contains("a record batch declares 268435456 rows, outside the limit of 0 to 134217728"),
            "{err}"
        );
    }
}

/// A compressed buffer that claims to decompress to 786 GB is refused
/// before arrow-ipc would try to allocate it (and abort).
#[test]
fn a_declared_decompressed_size_past_the_limit_is_refused() {
    for file_format in [false, true] {
        let mut bytes = ipc_bytes(&batches(), file_format);
        // Walk the messages to the first record batch's first buffer.
        let mut at = if file_format { 8 } else { 0 };
        let word = |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        while word(&bytes, at) == 0 {
            at += 8; // a file's padding after its magic
        }
        let prefix = loop {
            assert_eq!(word(&bytes, at), u32::MAX, "a continuation marker");
            let length = word(&bytes, at + 4) as usize;
            let metadata = bytes[at + 8..at + 8 + length].to_vec();
            let message = arrow_ipc::root_as_message(&metadata).unwrap();
            let body = at + 8 + length;
            if let Some(batch) = message.header_as_record_batch() {
                let buffer = batch.buffers().unwrap().iter().find(|b| b.length() >= 8).unwrap();
                break body + buffer.offset() as usize;
            }
            at = body + message.bodyLength() as usize;
        };
        bytes[prefix..prefix + 8].copy_from_slice(&785_979_015_170i64.to_le_bytes());
        let err = ArrowReader::ipc("bomb.arrow", std::io::Cursor::new(bytes), &options(100))
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("declares 7859790") && err.contains("bytes once decompressed, over the limit"),
            "{err}"
        );
    }
}

/// Parquet and Arrow IPC are held to the same column limit as CSV; IPC's
/// schema is refused before arrow-ipc decodes it.
#[test]
fn the_column_count_is_capped() {
    let wide = |n: usize| {
        let mut columns: Vec<(String, ArrayRef)> =
            vec![("customer".into(), Arc::new(StringArray::from(vec!["a", "b"])))];
        columns.extend((1..n).map(|i| (format!("c{i}"), Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef)));
        RecordBatch::try_from_iter(columns).unwrap()
    };
    let limits = InputLimits { max_columns: 10, ..InputLimits::default() };
    let options = IngestOptions { limits, ..options(100) };
    let file = parquet_file(&[wide(10)], Compression::UNCOMPRESSED);
    assert!(ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options).is_ok());
    let file = parquet_file(&[wide(11)], Compression::UNCOMPRESSED);
    let err = ArrowReader::parquet("in.parquet", file.reopen().unwrap(), &options).unwrap_err();
    assert_eq!(err.to_string(), "in.parquet: the input has 11 columns, over the limit of 10");
    for file_format in [true, false] {
        let bytes = ipc_bytes(&[wide(10)], file_format);
        assert!(ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options).is_ok());
        let bytes = ipc_bytes(&[wide(11)], file_format);
        let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options).unwrap_err();
        assert!(err.to_string().ends_with("the schema has 11 columns, over the limit of 10"), "{err}");
    }
}

#[test]
fn a_long_value_or_name_is_refused_and_quoted_short() {
    let limits = InputLimits { max_field_bytes: 1 << 10, ..InputLimits::default() };
    let limited = IngestOptions { limits, ..options(100) };
    let long = "é".repeat(5000);
    let values = batch(vec![
        ("customer", Arc::new(StringArray::from(vec!["a", "b"]))),
        ("note", Arc::new(StringArray::from(vec!["short".to_owned(), "n".repeat(2000)]))),
    ]);
    let bytes = ipc_bytes(&[values], true);
    let err = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &limited)
        .and_then(|mut reader| read_all(&mut reader))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "in.arrow, row 2, column `note`: the value takes 2000 bytes, over the limit of 1 KiB");

    // A nested type, its field named at length, under a long name.
    let inner = Field::new(long.clone(), DataType::Int32, true);
    let offsets = arrow_buffer::OffsetBuffer::from_lengths([1]);
    let list = ListArray::new(Arc::new(inner), offsets, Arc::new(Int32Array::from(vec![1])), None);
    let nested =
        batch(vec![("customer", Arc::new(StringArray::from(vec!["a"]))), (long.as_str(), Arc::new(list))]);
    let bytes = ipc_bytes(&[nested], true);
    let err =
        ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(100)).unwrap_err().to_string();
    assert!(err.len() < 400 && err.contains('…'), "{} bytes: {err}", err.len());
}

/// A reader over `batches` as they are in memory: sliced arrays and the
/// values under nulls reach it as the caller made them (a writer would
/// compact them).
fn in_memory(batches: &[RecordBatch], options: &IngestOptions) -> Result<ArrowReader, IngestError> {
    let batches: Vec<Result<RecordBatch, ArrowError>> = batches.iter().cloned().map(Ok).collect();
    ArrowReader::new(
        "in.arrow",
        &batches[0].as_ref().unwrap().schema(),
        Box::new(batches.into_iter()),
        options,
    )
}

/// Every cell of `tables`, row by row, as text (`None` for a null); and
/// checks that a null holds its column's default value.
fn cells_of(tables: &[Table]) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for table in tables {
        for row in 0..table.rows {
            let cells = table.columns.iter().map(|column| {
                let (value, default) = match &column.data {
                    ColumnData::Int(v) | ColumnData::Timestamp(v) => (v[row].to_string(), v[row] == 0),
                    ColumnData::Float(v) => (v[row].to_string(), v[row].to_bits() == 0),
                    ColumnData::Bool(v) => (v[row].to_string(), !v[row]),
                    ColumnData::Text { entries, codes } => {
                        let text = entries[codes[row] as usize].to_owned();
                        let empty = text.is_empty();
                        (text, empty)
                    }
                };
                if column.is_valid(row) {
                    Some(value)
                } else {
                    assert!(default, "a null holds its column's default, not {value}");
                    None
                }
            });
            rows.push(cells.collect());
        }
    }
    rows
}

/// `values` behind `skip` rows of padding, the nulls' slots and the
/// padding holding `garbage`, then sliced to `values`: an array with an
/// offset and values under its nulls, as a converter must read it.
fn sliced<T: arrow_array::ArrowPrimitiveType>(
    values: &[Option<T::Native>],
    garbage: T::Native,
) -> arrow_array::PrimitiveArray<T> {
    const SKIP: usize = 3;
    let mut all = vec![garbage; SKIP];
    all.extend(values.iter().map(|v| v.unwrap_or(garbage)));
    let valid: Vec<bool> =
        std::iter::repeat_n(false, SKIP).chain(values.iter().map(Option::is_some)).collect();
    arrow_array::PrimitiveArray::<T>::new(all.into(), Some(valid.into())).slice(SKIP, values.len())
}

/// Columns whose Arrow type is the vault column's own go in whole ranges
/// at a time. Read through sliced arrays (bit offsets too), with values
/// under the nulls that would fail or show if converted (an infinity, a
/// u64 past i64, a timestamp past i64 once scaled), NaN, dictionary keys
/// met again in a later chunk, large and view strings, and chunks cut
/// inside batches at every size: each cell is what the file holds.
#[test]
fn columns_of_matching_types_convert_whole_ranges_exactly() {
    use arrow_array::types::{
        Date32Type, Decimal128Type, Float32Type, Float64Type, Int8Type, Int64Type, TimestampMillisecondType,
        UInt64Type,
    };
    const ROWS: usize = 11;
    let pick = |row: usize, every: usize| row % every != 1;
    let n64: Vec<Option<i64>> = (0..ROWS).map(|r| pick(r, 3).then_some(r as i64 * 7 - 20)).collect();
    let n8: Vec<Option<i8>> = (0..ROWS).map(|r| pick(r, 4).then_some(r as i8 - 5)).collect();
    let big: Vec<Option<u64>> = (0..ROWS).map(|r| pick(r, 3).then_some(i64::MAX as u64 - r as u64)).collect();
    let mut f64s: Vec<Option<f64>> = (0..ROWS).map(|r| pick(r, 3).then_some(r as f64 / 4.0 - 1.0)).collect();
    f64s[2] = Some(f64::NAN);
    f64s[5] = Some(1e300);
    let mut f32s: Vec<Option<f32>> = (0..ROWS).map(|r| pick(r, 5).then_some(r as f32 * 1.1)).collect();
    f32s[3] = Some(f32::NAN);
    let cents: Vec<Option<i128>> = (0..ROWS).map(|r| pick(r, 2).then_some(r as i128 * 1234 - 5000)).collect();
    let flags: Vec<Option<bool>> = (0..ROWS).map(|r| pick(r, 3).then_some(r % 2 == 0)).collect();
    let millis: Vec<Option<i64>> =
        (0..ROWS).map(|r| pick(r, 4).then_some(r as i64 * 86_400_123 - 1)).collect();
    let days: Vec<Option<i32>> = (0..ROWS).map(|r| pick(r, 3).then_some(r as i32 * 400 - 2000)).collect();
    let cities: Vec<Option<String>> =
        (0..ROWS).map(|r| pick(r, 3).then(|| [" Delft", "Leiden ", "Delft"][r % 3].to_owned())).collect();
    let keys: Vec<Option<i8>> = (0..ROWS).map(|r| pick(r, 4).then_some((r % 3) as i8)).collect();
    let notes: Vec<Option<String>> = (0..ROWS)
        .map(|r| pick(r, 2).then(|| format!("a note long enough not to be inlined {}", r % 4)))
        .collect();

    let padded_text = |values: &[Option<String>]| -> Vec<Option<String>> {
        let mut all = vec![Some("padding".to_owned()); 3];
        all.extend(values.iter().cloned());
        all
    };
    let flag_array = {
        let mut values = vec![true; 3];
        values.extend(flags.iter().map(|f| f.unwrap_or(true)));
        let valid: Vec<bool> =
            std::iter::repeat_n(false, 3).chain(flags.iter().map(Option::is_some)).collect();
        BooleanArray::new(values.into(), Some(valid.into())).slice(3, ROWS)
    };
    let segment = DictionaryArray::<Int8Type>::new(
        sliced::<Int8Type>(&keys, 0),
        Arc::new(StringArray::from(vec![" x ", "x", "y", "never used"])),
    );
    let batch = batch(vec![
        (
            "customer",
            Arc::new(
                StringArray::from((0..ROWS + 3).map(|r| format!("c{r}")).collect::<Vec<_>>()).slice(3, ROWS),
            ),
        ),
        ("n64", Arc::new(sliced::<Int64Type>(&n64, 77))),
        ("n8", Arc::new(sliced::<Int8Type>(&n8, 5))),
        ("big", Arc::new(sliced::<UInt64Type>(&big, u64::MAX))),
        ("f64", Arc::new(sliced::<Float64Type>(&f64s, f64::INFINITY))),
        ("f32", Arc::new(sliced::<Float32Type>(&f32s, f32::NEG_INFINITY))),
        ("cents", Arc::new(sliced::<Decimal128Type>(&cents, 999).with_precision_and_scale(12, 2).unwrap())),
        ("flag", Arc::new(flag_array)),
        ("seen", Arc::new(sliced::<TimestampMillisecondType>(&millis, i64::MAX))),
        ("day", Arc::new(sliced::<Date32Type>(&days, i32::MAX))),
        ("city", Arc::new(LargeStringArray::from(padded_text(&cities)).slice(3, ROWS))),
        ("segment", Arc::new(segment)),
        ("note", Arc::new(StringViewArray::from(padded_text(&notes)).slice(3, ROWS))),
    ]);

    let text = |v: Option<String>| v;
    let expected: Vec<Vec<Option<String>>> = (0..ROWS)
        .map(|r| {
            vec![
                Some(format!("c{}", r + 3)),
                n64[r].map(|v| v.to_string()),
                n8[r].map(|v| v.to_string()),
                big[r].map(|v| v.to_string()),
                f64s[r].filter(|v| !v.is_nan()).map(|v| v.to_string()),
                f32s[r].filter(|v| !v.is_nan()).map(|v| f64::from(v).to_string()),
                cents[r].map(|v| (v as f64 / 100.0).to_string()),
                flags[r].map(|v| v.to_string()),
                millis[r].map(|v| (v * 1000).to_string()),
                days[r].map(|v| (i64::from(v) * 86_400_000_000).to_string()),
                text(cities[r].as_ref().map(|c| c.trim().to_owned())),
                keys[r].map(|k| ["x", "x", "y"][k as usize].to_owned()),
                text(notes[r].clone()),
            ]
        })
        .collect();
    let twice: Vec<_> = expected.iter().chain(&expected).cloned().collect();
    for chunk_rows in [1, 2, 3, 4, 5, ROWS, 2 * ROWS, 100] {
        let tables = in_memory(&[batch.clone(), batch.clone()], &options(chunk_rows))
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap_or_else(|e| panic!("{chunk_rows} rows a chunk: {e}"));
        assert!(tables.iter().all(|t| t.rows <= chunk_rows), "{chunk_rows}");
        assert_eq!(cells_of(&tables), twice, "{chunk_rows} rows a chunk");
        // Each chunk's dictionary is its own, in the order its rows use it.
        let ColumnData::Text { entries, codes } = &tables[0].columns[11].data else { panic!() };
        let first_seen: Vec<u32> = codes.iter().fold(Vec::new(), |mut seen, &c| {
            if !seen.contains(&c) {
                seen.push(c);
            }
            seen
        });
        assert_eq!(first_seen, (0..entries.len() as u32).collect::<Vec<_>>(), "{chunk_rows}");
    }
    // Through a file (the writer compacts the slices): the same cells.
    for file_format in [true, false] {
        let bytes = ipc_bytes(std::slice::from_ref(&batch), file_format);
        let tables = ArrowReader::ipc("in.arrow", std::io::Cursor::new(bytes), &options(4))
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap();
        assert_eq!(cells_of(&tables), expected, "ipc file={file_format}");
    }
}

/// A value that does not fit, in a column converted a range at a time, is
/// reported at its row (counted across batches and chunks); where values go
/// in both ways, the error is the one a row-by-row reader meets first: the
/// lowest row, then the leftmost column.
#[test]
fn an_error_in_a_whole_range_names_the_first_row_and_column() {
    let ids = |n: usize| -> ArrayRef {
        Arc::new(StringArray::from((0..n).map(|r| format!("c{r}")).collect::<Vec<_>>()))
    };
    let floats = |values: Vec<f64>| -> ArrayRef { Arc::new(arrow_array::Float64Array::from(values)) };
    let read = |batches: &[RecordBatch], chunk_rows: usize| {
        in_memory(batches, &options(chunk_rows))
            .and_then(|mut reader| read_all(&mut reader))
            .unwrap_err()
            .to_string()
    };
    let first = batch(vec![("customer", ids(3)), ("x", floats(vec![1.0, 2.0, 3.0]))]);
    let second = batch(vec![("customer", ids(3)), ("x", floats(vec![1.0, f64::NEG_INFINITY, 3.0]))]);
    for chunk_rows in [1, 2, 4, 100] {
        assert_eq!(
            read(&[first.clone(), second.clone()], chunk_rows),
            "in.arrow, row 5, column `x`: expected float, found `-inf`",
            "{chunk_rows} rows a chunk"
        );
    }
    let big = UInt64Array::from(vec![0, 1, 2, u64::MAX, 4]).slice(1, 4);
    let wide = batch(vec![("customer", ids(4)), ("n", Arc::new(big))]);
    assert_eq!(
        read(&[wide], 2),
        "in.arrow, row 3, column `n`: 18446744073709551615 does not fit a 64-bit int"
    );

    let customers = |blank: usize| -> ArrayRef {
        Arc::new(StringArray::from(
            (0..4).map(|r| if r == blank { " ".into() } else { format!("c{r}") }).collect::<Vec<_>>(),
        ))
    };
    let infinite = |at: usize| floats((0..4).map(|r| if r == at { f64::INFINITY } else { 1.0 }).collect());
    let empty = "the entity column is empty";
    let inf = "expected float, found `inf`";
    let cases = [
        (batch(vec![("customer", customers(2)), ("x", infinite(1))]), format!("row 2, column `x`: {inf}")),
        (
            batch(vec![("customer", customers(1)), ("x", infinite(2))]),
            format!("row 2, column `customer`: {empty}"),
        ),
        (
            batch(vec![("customer", customers(1)), ("x", infinite(1))]),
            format!("row 2, column `customer`: {empty}"),
        ),
        (batch(vec![("x", infinite(1)), ("customer", customers(1))]), format!("row 2, column `x`: {inf}")),
    ];
    for (batch, expected) in cases {
        assert_eq!(read(std::slice::from_ref(&batch), 100), format!("in.arrow, {expected}"));
    }
}
