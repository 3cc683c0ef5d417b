//! Arrow columns into vault columns: each batch column widened to the
//! vault's types, then pushed value by value; a value of another type than
//! its column's goes through its text form, as CSV would.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal32Type, Decimal64Type, Decimal128Type, DecimalType, Float16Type,
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, BooleanArray, LargeStringArray, StringArray, StringViewArray};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{DataType, TimeUnit};

use crate::quote;
use crate::readers::shared::{self, InputLimits};
use crate::schema::{Classification, ColumnType};
use crate::table::TableBuilder;
use crate::timestamp::{TIMESTAMP_RANGE, format_timestamp};

/// One batch column's values, widened to the vault's types, with its nulls.
pub(super) struct Cells {
    values: Values,
    nulls: Option<arrow_buffer::NullBuffer>,
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

enum Text {
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
}

impl Cells {
    /// Widen `array`, a column whose type [`super::column_type`] admitted; an
    /// error names the row (0-based) of a value that does not fit.
    pub(super) fn of(array: &ArrayRef) -> Result<Self, (usize, String)> {
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

/// Push row `row` of `cells` into column `i`. A value of the column's own
/// type goes in as it is; any other through its text form, as CSV would.
pub(super) fn push_cell(
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
    // A decimal goes into an int column exactly, or through its text (and
    // its error).
    let decimal_int = match (&cells.values, field.column_type) {
        (Values::Decimal { values, scale }, ColumnType::Int) => decimal_to_int(values[row], *scale),
        _ => None,
    };
    match (&cells.values, field.column_type) {
        (Values::Int(v), ColumnType::Int) => builder.push_i64(i, v[row]),
        (Values::UInt64(v), ColumnType::Int) => {
            let v = v[row];
            builder.push_i64(i, i64::try_from(v).map_err(|_| format!("{v} does not fit a 64-bit int"))?)
        }
        (Values::Decimal { .. }, ColumnType::Int) if decimal_int.is_some() => {
            builder.push_i64(i, decimal_int.expect("checked"))
        }
        (Values::Timestamp(v), ColumnType::Timestamp) => {
            // What the CSV reader could not read back from an export.
            let v = v[row];
            if !TIMESTAMP_RANGE.contains(&v) {
                return Err(format!(
                    "timestamp {} is outside the years 0000 to 9999",
                    quote::truncate(&format_timestamp(v))
                ));
            }
            builder.push_i64(i, v)
        }
        (Values::Bool(v), ColumnType::Bool) => builder.push_bool(i, v.value(row)),
        (Values::Float(v), ColumnType::Float) if v[row].is_finite() => builder.push_f64(i, v[row]),
        (Values::Float32(v), ColumnType::Float) if v[row].is_finite() => builder.push_f64(i, v[row].into()),
        (Values::Decimal { values, scale }, ColumnType::Float) => {
            builder.push_f64(i, values[row] as f64 / 10f64.powi(i32::from(*scale)))
        }
        (Values::Text(t), ColumnType::Text) => {
            let value = t.value(row);
            shared::check_field(value, limits)?;
            // Trimmed, as the CSV reader trims.
            let value = value.trim();
            if entity && value.is_empty() {
                return Err("the entity column is empty".into());
            }
            builder.push_text(i, value)
        }
        (values, _) => {
            let text = match values {
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
            return shared::push_text_value(builder, i, &text, limits);
        }
    }
    Ok(())
}

/// The unscaled decimal `value` as an int, if it is a whole number that fits.
fn decimal_to_int(value: i128, scale: i8) -> Option<i64> {
    let power = 10i128.checked_pow(u32::from(scale.unsigned_abs()))?;
    let whole =
        if scale >= 0 { (value % power == 0).then(|| value / power)? } else { value.checked_mul(power)? };
    i64::try_from(whole).ok()
}
