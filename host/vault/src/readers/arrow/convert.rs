//! Arrow columns into vault columns. A column whose Arrow type is the vault
//! column's own goes in whole ranges of rows at a time: buffers copied or
//! widened in one pass, then the rows that need it (nulls, NaN, values out
//! of range) looked at. Text is looked up in the chunk's dictionary value by
//! value, a dictionary array's key once per chunk. A value of another type
//! than its column's goes through its text form, as CSV would.

use std::ops::Range;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Date32Type, Date64Type, Decimal32Type, Decimal64Type, Decimal128Type, DecimalType,
    Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, BooleanArray, LargeStringArray, StringArray, StringViewArray};
use arrow_buffer::{NullBuffer, ScalarBuffer};
use arrow_schema::{DataType, TimeUnit};

use crate::readers::shared::{self, InputLimits};
use crate::schema::{Classification, ColumnType};
use crate::table::TableBuilder;
use crate::timestamp::{TIMESTAMP_RANGE, format_timestamp};

/// A dictionary key whose value has no code in this chunk yet.
const NO_CODE: u32 = u32::MAX;

/// One batch column, ready to go into its vault column.
pub(super) enum BatchColumn {
    /// The Arrow type is the column's own, and not text: a range of rows
    /// goes in at once.
    Whole { array: ArrayRef, nulls: Option<NullBuffer> },
    /// Text into a text column, value by value.
    Text {
        text: Text,
        nulls: Option<NullBuffer>,
        /// By dictionary key, the code its value has in this chunk's
        /// dictionary ([`NO_CODE`] if none yet): a key's value is checked
        /// and looked up once per chunk.
        codes: Vec<u32>,
    },
    /// Another type than the column's, or Arrow's all-null type: value by
    /// value, through the text form where the types differ.
    Cells(Cells),
}

impl BatchColumn {
    /// `array`, a column whose type [`super::column_type`] admitted, for a
    /// vault column of `column_type`; an error names the row (0-based) of a
    /// value that does not fit.
    pub(super) fn of(array: &ArrayRef, column_type: ColumnType) -> Result<Self, (usize, String)> {
        let own = array.data_type() != &DataType::Null
            && super::column_type(array.data_type()) == Some(column_type);
        if !own {
            return Ok(Self::Cells(Cells::of(array)?));
        }
        if column_type != ColumnType::Text {
            return Ok(Self::Whole { array: array.clone(), nulls: array.logical_nulls() });
        }
        Ok(match Text::of(array)? {
            None => Self::Cells(Cells { values: Values::Null, nulls: None }),
            Some(text) => {
                let keys = match &text {
                    Text::Dictionary { values, .. } => values.len(),
                    _ => 0,
                };
                Self::Text { text, nulls: array.logical_nulls(), codes: vec![NO_CODE; keys] }
            }
        })
    }

    /// Whether this column goes in value by value ([`Self::push_one`]);
    /// else a range at a time ([`Self::push_range`]).
    pub(super) fn by_value(&self) -> bool {
        !matches!(self, Self::Whole { .. })
    }

    /// Push row `row` into column `i`, if this column goes in value by
    /// value. The error is the detail to report.
    pub(super) fn push_one(
        &mut self,
        builder: &mut TableBuilder,
        i: usize,
        row: usize,
        limits: &InputLimits,
    ) -> Result<(), String> {
        match self {
            Self::Whole { .. } => Ok(()),
            Self::Text { text, nulls, codes } => {
                push_text(builder, i, text, nulls.as_ref(), codes, row, limits)
            }
            Self::Cells(cells) => push_cell(builder, i, cells, row, limits),
        }
    }

    /// Push rows `rows` into column `i`, if this column goes in a range at
    /// a time. An error names the first row (0-based in the batch) whose
    /// value does not fit, and leaves the column short.
    pub(super) fn push_range(
        &self,
        builder: &mut TableBuilder,
        i: usize,
        rows: Range<usize>,
    ) -> Result<(), (usize, String)> {
        match self {
            Self::Whole { array, nulls } => push_whole(builder, i, array, nulls.as_ref(), rows),
            Self::Text { .. } | Self::Cells(_) => Ok(()),
        }
    }

    /// A new chunk begins: its dictionaries start empty.
    pub(super) fn new_chunk(&mut self) {
        if let Self::Text { codes, .. } = self {
            codes.fill(NO_CODE);
        }
    }
}

/// Push rows `rows` of `array`, whose type is column `i`'s own, into it.
fn push_whole(
    builder: &mut TableBuilder,
    i: usize,
    array: &ArrayRef,
    nulls: Option<&NullBuffer>,
    rows: Range<usize>,
) -> Result<(), (usize, String)> {
    let start = rows.start;
    let present = |row: usize| nulls.is_none_or(|n| n.is_valid(row));
    let base = builder.column_len(i);
    fn values<'a, T: ArrowPrimitiveType>(array: &'a ArrayRef, rows: &Range<usize>) -> &'a [T::Native] {
        &array.as_primitive::<T>().values()[rows.clone()]
    }
    macro_rules! ints {
        ($t:ty) => {
            builder.ints_mut(i).extend(values::<$t>(array, &rows).iter().map(|&v| i64::from(v)))
        };
    }
    macro_rules! floats {
        ($t:ty) => {
            push_floats(
                builder,
                i,
                values::<$t>(array, &rows).iter().map(|&v| f64::from(v)),
                start,
                &present,
            )?
        };
    }
    macro_rules! decimals {
        ($t:ty, $scale:expr) => {{
            let divisor = 10f64.powi(i32::from(*$scale));
            let values = values::<$t>(array, &rows);
            builder.floats_mut(i).extend(values.iter().map(|&v| i128::from(v) as f64 / divisor))
        }};
    }
    macro_rules! micros {
        ($t:ty, $per_unit:expr) => {{
            let values = values::<$t>(array, &rows);
            push_timestamps(
                builder,
                i,
                values.iter().map(|&v| (v, i64::from(v).checked_mul($per_unit))),
                start,
                &present,
            )?
        }};
    }
    use DataType as D;
    match array.data_type() {
        D::Int8 => ints!(Int8Type),
        D::Int16 => ints!(Int16Type),
        D::Int32 => ints!(Int32Type),
        D::Int64 => builder.ints_mut(i).extend_from_slice(values::<Int64Type>(array, &rows)),
        D::UInt8 => ints!(UInt8Type),
        D::UInt16 => ints!(UInt16Type),
        D::UInt32 => ints!(UInt32Type),
        D::UInt64 => {
            let values = values::<UInt64Type>(array, &rows);
            let too_large =
                values.iter().enumerate().find(|&(k, &v)| v > i64::MAX as u64 && present(start + k));
            if let Some((k, v)) = too_large {
                return Err((start + k, format!("{v} does not fit a 64-bit int")));
            }
            // A null's value may be anything: it is reset below.
            builder.ints_mut(i).extend(values.iter().map(|&v| v as i64));
        }
        D::Float16 => floats!(Float16Type),
        D::Float32 => floats!(Float32Type),
        D::Float64 => floats!(Float64Type),
        D::Decimal32(_, scale) => decimals!(Decimal32Type, scale),
        D::Decimal64(_, scale) => decimals!(Decimal64Type, scale),
        D::Decimal128(_, scale) => decimals!(Decimal128Type, scale),
        D::Boolean => {
            let values = array.as_boolean().values().slice(start, rows.len());
            builder.bools_mut(i).extend(values.iter());
        }
        D::Timestamp(TimeUnit::Second, _) => micros!(TimestampSecondType, 1_000_000),
        D::Timestamp(TimeUnit::Millisecond, _) => micros!(TimestampMillisecondType, 1_000),
        D::Timestamp(TimeUnit::Microsecond, _) => {
            let values = values::<TimestampMicrosecondType>(array, &rows);
            push_timestamps(builder, i, values.iter().map(|&v| (v, Some(v))), start, &present)?
        }
        D::Timestamp(TimeUnit::Nanosecond, _) => {
            let values = values::<TimestampNanosecondType>(array, &rows);
            push_timestamps(
                builder,
                i,
                values.iter().map(|&v| (v, Some(v.div_euclid(1_000)))),
                start,
                &present,
            )?
        }
        D::Date32 => micros!(Date32Type, 86_400_000_000),
        D::Date64 => micros!(Date64Type, 1_000),
        other => unreachable!("{other} is not a type that goes in whole"),
    }
    if let Some(nulls) = nulls.filter(|n| n.slice(start, rows.len()).null_count() > 0) {
        for row in rows.filter(|&row| nulls.is_null(row)) {
            builder.set_null(i, base + row - start);
        }
    }
    Ok(())
}

/// Append `values`, rows from `start` of a float column: NaN (how pandas
/// writes a missing float) is a null, an infinity an error unless the row
/// is null.
fn push_floats(
    builder: &mut TableBuilder,
    i: usize,
    values: impl Iterator<Item = f64>,
    start: usize,
    present: &impl Fn(usize) -> bool,
) -> Result<(), (usize, String)> {
    let out = builder.floats_mut(i);
    let base = out.len();
    out.extend(values);
    if out[base..].iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let mut nan = Vec::new();
    for (k, &v) in out[base..].iter().enumerate() {
        let row = start + k;
        if v.is_finite() || !present(row) {
            continue;
        }
        if v.is_nan() {
            nan.push(base + k);
        } else {
            // What the text path says of it.
            return Err((row, shared::expected(ColumnType::Float, &v.to_string())));
        }
    }
    nan.into_iter().for_each(|at| builder.set_null(i, at));
    Ok(())
}

/// Append timestamps, rows from `start`: each the file's value and its
/// microseconds (`None` if out of i64's range). A present value must be in
/// range, and in the years the CSV reader reads back from an export.
fn push_timestamps<T: std::fmt::Display>(
    builder: &mut TableBuilder,
    i: usize,
    values: impl ExactSizeIterator<Item = (T, Option<i64>)>,
    start: usize,
    present: &impl Fn(usize) -> bool,
) -> Result<(), (usize, String)> {
    let out = builder.ints_mut(i);
    out.reserve(values.len());
    for (k, (given, micros)) in values.enumerate() {
        let row = start + k;
        match micros {
            Some(us) if TIMESTAMP_RANGE.contains(&us) || !present(row) => out.push(us),
            Some(us) => {
                return Err((
                    row,
                    format!(
                        "timestamp {} is outside the years 0000 to 9999",
                        crate::quote::truncate(&format_timestamp(us))
                    ),
                ));
            }
            None if present(row) => return Err((row, format!("timestamp {given} is out of range"))),
            None => out.push(0),
        }
    }
    Ok(())
}

/// Push row `row` of `text` into text column `i`, trimmed as the CSV reader
/// trims.
fn push_text(
    builder: &mut TableBuilder,
    i: usize,
    text: &Text,
    nulls: Option<&NullBuffer>,
    codes: &mut [u32],
    row: usize,
    limits: &InputLimits,
) -> Result<(), String> {
    let entity = builder.schema().fields[i].classification == Classification::Entity;
    if nulls.is_some_and(|n| n.is_null(row)) {
        if entity {
            return Err("the entity column is empty".into());
        }
        builder.push_null(i);
        return Ok(());
    }
    let checked = |value: &str| -> Result<(), String> {
        shared::check_field(value, limits)?;
        if entity && value.trim().is_empty() {
            return Err("the entity column is empty".into());
        }
        Ok(())
    };
    match text {
        Text::Dictionary { keys, values } => {
            let key = keys[row];
            match codes[key] {
                NO_CODE => {
                    let value = values.value(key);
                    checked(value)?;
                    codes[key] = builder.push_text_code(i, value.trim());
                }
                code => builder.push_code(i, code),
            }
        }
        text => {
            let value = text.value(row);
            checked(value)?;
            builder.push_text(i, value.trim());
        }
    }
    Ok(())
}

/// One batch column's values, widened to the vault's types, with its nulls.
pub(super) struct Cells {
    values: Values,
    nulls: Option<NullBuffer>,
}

/// A column's values, widened only where that loses nothing: a value that
/// goes into a column of another type (an entity, say) is converted from
/// what the file holds.
enum Values {
    Int(Vec<i64>),
    /// Whether a value fits an int column is known only once pushed there.
    UInt64(ScalarBuffer<u64>),
    /// 16- and 64-bit floats.
    Float(Vec<f64>),
    /// As text, `1.1` stays `1.1`, not its f64 widening `1.100000023841858`.
    Float32(ScalarBuffer<f32>),
    /// Unscaled values: an f64 would merge two 20-digit identifiers.
    Decimal {
        values: Vec<i128>,
        scale: i8,
    },
    Bool(BooleanArray),
    /// Microseconds since the epoch.
    Timestamp(Vec<i64>),
    Text(Text),
    /// Arrow's all-null type.
    Null,
}

pub(super) enum Text {
    Utf8(StringArray),
    Large(LargeStringArray),
    View(StringViewArray),
    Dictionary { keys: Vec<usize>, values: Box<Text> },
}

impl Text {
    /// The text of `array`, or `None` for a dictionary column with an empty
    /// dictionary: every row of it is null (arrow-rs asserts on its keys).
    fn of(array: &ArrayRef) -> Result<Option<Self>, (usize, String)> {
        Ok(Some(match array.data_type() {
            DataType::Utf8 => Self::Utf8(array.as_string::<i32>().clone()),
            DataType::LargeUtf8 => Self::Large(array.as_string::<i64>().clone()),
            DataType::Utf8View => Self::View(array.as_string_view().clone()),
            DataType::Dictionary(..) => {
                let dictionary = array.as_any_dictionary();
                if dictionary.values().is_empty() {
                    let keys = dictionary.keys();
                    return match (0..keys.len()).find(|&row| keys.is_valid(row)) {
                        None => Ok(None),
                        Some(row) => {
                            Err((row, "the value's dictionary key points into an empty dictionary".into()))
                        }
                    };
                }
                let values =
                    Self::of(dictionary.values())?.expect("a dictionary's values are not a dictionary");
                Self::Dictionary { keys: dictionary.normalized_keys(), values: Box::new(values) }
            }
            other => unreachable!("column_type admitted {other} as text"),
        }))
    }

    fn value(&self, row: usize) -> &str {
        match self {
            Self::Utf8(a) => a.value(row),
            Self::Large(a) => a.value(row),
            Self::View(a) => a.value(row),
            Self::Dictionary { keys, values } => values.value(keys[row]),
        }
    }

    /// Rows (of a dictionary's values array: its entries).
    fn len(&self) -> usize {
        match self {
            Self::Utf8(a) => a.len(),
            Self::Large(a) => a.len(),
            Self::View(a) => a.len(),
            Self::Dictionary { keys, .. } => keys.len(),
        }
    }
}

impl Cells {
    /// Widen `array`, a column whose type [`super::column_type`] admitted;
    /// an error names the row (0-based) of a value that does not fit.
    fn of(array: &ArrayRef) -> Result<Self, (usize, String)> {
        // Not through logical_nulls(): for Arrow's Null type it allocates a
        // bitmap as long as the batch declares.
        if array.data_type() == &DataType::Null {
            return Ok(Self { values: Values::Null, nulls: None });
        }
        let nulls = array.logical_nulls();
        let present = |row: usize| nulls.as_ref().is_none_or(|n| n.is_valid(row));
        macro_rules! ints {
            ($t:ty) => {
                Values::Int(array.as_primitive::<$t>().values().iter().map(|&v| i64::from(v)).collect())
            };
        }
        macro_rules! micros {
            ($t:ty, $per_unit:expr) => {{
                let values = array.as_primitive::<$t>().values();
                let mut out = Vec::with_capacity(values.len());
                for (row, &v) in values.iter().enumerate() {
                    let scaled = i64::from(v).checked_mul($per_unit);
                    match scaled {
                        Some(us) => out.push(us),
                        None if present(row) => return Err((row, format!("timestamp {v} is out of range"))),
                        None => out.push(0),
                    }
                }
                Values::Timestamp(out)
            }};
        }
        macro_rules! decimals {
            ($t:ty, $scale:expr) => {
                Values::Decimal {
                    values: array.as_primitive::<$t>().values().iter().map(|&v| i128::from(v)).collect(),
                    scale: $scale,
                }
            };
        }
        use DataType as D;
        let values = match array.data_type() {
            D::Int8 => ints!(Int8Type),
            D::Int16 => ints!(Int16Type),
            D::Int32 => ints!(Int32Type),
            D::Int64 => ints!(Int64Type),
            D::UInt8 => ints!(UInt8Type),
            D::UInt16 => ints!(UInt16Type),
            D::UInt32 => ints!(UInt32Type),
            D::UInt64 => Values::UInt64(array.as_primitive::<UInt64Type>().values().clone()),
            D::Float16 => Values::Float(
                array.as_primitive::<Float16Type>().values().iter().map(|&v| v.into()).collect(),
            ),
            D::Float32 => Values::Float32(array.as_primitive::<Float32Type>().values().clone()),
            D::Float64 => Values::Float(array.as_primitive::<Float64Type>().values().to_vec()),
            D::Decimal32(_, scale) => decimals!(Decimal32Type, *scale),
            D::Decimal64(_, scale) => decimals!(Decimal64Type, *scale),
            D::Decimal128(_, scale) => decimals!(Decimal128Type, *scale),
            D::Boolean => Values::Bool(array.as_boolean().clone()),
            D::Timestamp(TimeUnit::Second, _) => micros!(TimestampSecondType, 1_000_000),
            D::Timestamp(TimeUnit::Millisecond, _) => micros!(TimestampMillisecondType, 1_000),
            D::Timestamp(TimeUnit::Microsecond, _) => micros!(TimestampMicrosecondType, 1),
            D::Timestamp(TimeUnit::Nanosecond, _) => Values::Timestamp(
                array
                    .as_primitive::<TimestampNanosecondType>()
                    .values()
                    .iter()
                    .map(|v| v.div_euclid(1_000))
                    .collect(),
            ),
            D::Date32 => micros!(Date32Type, 86_400_000_000),
            D::Date64 => micros!(Date64Type, 1_000),
            D::Null => unreachable!("handled above"),
            _ => Text::of(array)?.map_or(Values::Null, Values::Text),
        };
        Ok(Self { values, nulls })
    }
}

/// Push row `row` of `cells`, of another type than column `i`'s (or Arrow's
/// all-null type), into it: through its text form, as CSV would, but a
/// decimal into an int column exactly where it is whole.
fn push_cell(
    builder: &mut TableBuilder,
    i: usize,
    cells: &Cells,
    row: usize,
    limits: &InputLimits,
) -> Result<(), String> {
    let field = &builder.schema().fields[i];
    let entity = field.classification == Classification::Entity;
    // NaN is how pandas writes a missing float.
    let nan = match &cells.values {
        Values::Float(v) => v[row].is_nan(),
        Values::Float32(v) => v[row].is_nan(),
        _ => false,
    };
    if nan || matches!(cells.values, Values::Null) || cells.nulls.as_ref().is_some_and(|n| n.is_null(row)) {
        if entity {
            return Err("the entity column is empty".into());
        }
        builder.push_null(i);
        return Ok(());
    }
    if let (Values::Decimal { values, scale }, ColumnType::Int) = (&cells.values, field.column_type)
        && let Some(whole) = decimal_to_int(values[row], *scale)
    {
        builder.push_i64(i, whole);
        return Ok(());
    }
    let text = match &cells.values {
        Values::Int(v) => v[row].to_string(),
        Values::UInt64(v) => v[row].to_string(),
        Values::Float(v) => v[row].to_string(),
        Values::Float32(v) => v[row].to_string(),
        Values::Decimal { values, scale } => Decimal128Type::format_decimal(values[row], 38, *scale),
        Values::Bool(v) => v.value(row).to_string(),
        Values::Timestamp(v) => format_timestamp(v[row]),
        Values::Text(t) => t.value(row).to_owned(),
        Values::Null => unreachable!("handled above"),
    };
    shared::push_text_value(builder, i, &text, limits)
}

/// The unscaled decimal `value` as an int, if it is a whole number that fits.
fn decimal_to_int(value: i128, scale: i8) -> Option<i64> {
    let power = 10i128.checked_pow(u32::from(scale.unsigned_abs()))?;
    let whole =
        if scale >= 0 { (value % power == 0).then(|| value / power)? } else { value.checked_mul(power)? };
    i64::try_from(whole).ok()
}
