//! The shapes of the ids and names a request may carry, checked before any
//! lookup or audit entry: a malformed one is a 400 that reads and writes
//! nothing, and error messages quote at most [`QUOTE_BYTES`] of it.

use crate::error::{Error, Result};

/// Hex digits after the prefix of an id made by `new_id`.
pub const ID_HEX: usize = 24;

/// Most bytes of a caller's input that an error message quotes.
pub const QUOTE_BYTES: usize = 64;

/// Id prefixes, by what they name.
pub const JOB: &str = "job";
pub const APPROVAL: &str = "apr";
pub const GRANT: &str = "grant";
pub const BENCHMARK_RUN: &str = "brun";
pub const ENROLMENT: &str = "enr";

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `text` cut to [`QUOTE_BYTES`] (at a character boundary) with `…`, for an
/// error message.
pub fn quote(text: &str) -> String {
    if text.len() <= QUOTE_BYTES {
        return text.to_owned();
    }
    let mut end = QUOTE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Whether `id` has the shape `new_id(prefix)` gives: `prefix_` and
/// [`ID_HEX`] lowercase hex digits.
pub fn is_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == ID_HEX && is_lower_hex(hex))
}

/// `id` if it is a `prefix` id, else a 400 naming `what`.
pub fn check_id<'a>(what: &str, prefix: &str, id: &'a str) -> Result<&'a str> {
    if is_id(prefix, id) {
        Ok(id)
    } else {
        Err(Error::BadRequest(format!(
            "`{}` is not a {what} id ({prefix}_ and {ID_HEX} hex digits)",
            quote(id)
        )))
    }
}

/// Whether `id` has the shape of a token id: 12 lowercase hex digits.
pub fn is_token_id(id: &str) -> bool {
    id.len() == 12 && is_lower_hex(id)
}

/// Most datasets a manifest reads, and so a request maps.
pub const MAX_DATASETS: usize = 32;
/// Most tables a manifest declares.
pub const MAX_OUTPUTS: usize = 32;
/// Most columns of one dataset a manifest reads.
pub const MAX_COLUMNS: usize = 256;
/// Longest column name a manifest declares.
pub const MAX_COLUMN_NAME: usize = 256;

/// `name` if it has the shape of a manifest's dataset, table or parameter
/// name: 1 to 64 ASCII letters, digits, `_` or `-`.
pub fn check_manifest_name<'a>(what: &str, name: &'a str) -> Result<&'a str> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(name)
    } else {
        Err(Error::BadRequest(format!("`{}` is not a valid {what} name", quote(name))))
    }
}

/// `name` if it can be a column's name: 1 to [`MAX_COLUMN_NAME`] bytes.
pub fn check_column_name(name: &str) -> Result<&str> {
    if (1..=MAX_COLUMN_NAME).contains(&name.len()) {
        Ok(name)
    } else {
        Err(Error::BadRequest(format!("`{}` is not a valid column name", quote(name))))
    }
}

/// `hash` if it has the shape of a plugin hash.
pub fn check_hash(hash: &str) -> Result<&str> {
    if crate::registry::is_hash(hash) {
        Ok(hash)
    } else {
        Err(Error::BadRequest(format!("`{}` is not a plugin hash (64 hex digits)", quote(hash))))
    }
}

/// At most `max` items, else a 400 naming `what`.
pub fn check_count(what: &str, count: usize, max: usize) -> Result<()> {
    if count <= max { Ok(()) } else { Err(Error::BadRequest(format!("at most {max} {what}, got {count}"))) }
}

/// A benchmark version in a path: `latest` or a number.
pub fn is_version(version: &str) -> bool {
    version == "latest"
        || (version.len() <= 19 && !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()))
}

/// Check one path parameter of `route` (a route template) by its name.
/// A parameter this function does not know is refused: a new route must
/// say what its parameters look like.
pub fn check_path_param(route: &str, name: &str, value: &str) -> Result<()> {
    let ok = match name {
        "tenant" | "dataset" | "benchmark" => return crate::tenants::check_name(name, value).map(|_| ()),
        "hash" => return check_hash(value).map(|_| ()),
        "version" => is_version(value),
        "run" => is_id(BENCHMARK_RUN, value),
        "id" => match id_prefix(route) {
            Some(prefix) => return check_id(id_kind(prefix), prefix, value).map(|_| ()),
            None if route.starts_with("/v1/tokens/") => is_token_id(value),
            None => false,
        },
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!("`{}` is not a valid {name} in this path", quote(value))))
    }
}

/// The id prefix an `{id}` in `route` takes, if it is one `new_id` makes.
fn id_prefix(route: &str) -> Option<&'static str> {
    if route.starts_with("/v1/jobs/") {
        Some(JOB)
    } else if route.ends_with("/approvals/{id}") {
        Some(APPROVAL)
    } else if route.ends_with("/grants/{id}") {
        Some(GRANT)
    } else if route.ends_with("/enrolments/{id}") {
        Some(ENROLMENT)
    } else {
        None
    }
}

fn id_kind(prefix: &str) -> &'static str {
    match prefix {
        JOB => "job",
        APPROVAL => "approval",
        GRANT => "grant",
        ENROLMENT => "enrolment",
        _ => "record",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_24_hex_digits() {
        let id = crate::new_id(JOB);
        assert!(is_id(JOB, &id), "{id}");
        assert!(!is_id(APPROVAL, &id));
        for bad in [
            "job_",
            "job",
            "job_0123456789abcdef0123456",
            "job_0123456789abcdef012345678",
            "job_0123456789ABCDEF01234567",
            "jo_0123456789abcdef01234567",
            "job-0123456789abcdef01234567",
        ] {
            assert!(!is_id(JOB, bad), "{bad}");
        }
    }

    #[test]
    fn a_long_input_is_quoted_cut() {
        let long = "é".repeat(1000);
        let quoted = quote(&long);
        assert!(quoted.len() <= QUOTE_BYTES + '…'.len_utf8(), "{}", quoted.len());
        assert!(quoted.ends_with('…'));
        let Err(Error::BadRequest(message)) = check_id("job", JOB, &long) else { panic!("refused") };
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn path_parameters_are_checked_by_name_and_route() {
        let job = crate::new_id(JOB);
        assert!(check_path_param("/v1/jobs/{id}", "id", &job).is_ok());
        assert!(check_path_param("/v1/tenants/{tenant}/approvals/{id}", "id", &job).is_err());
        assert!(check_path_param("/v1/tokens/{id}", "id", "0123456789ab").is_ok());
        assert!(check_path_param("/v1/tokens/{id}", "id", "0123456789abc").is_err());
        assert!(check_path_param("/v1/x/{tenant}", "tenant", "acme").is_ok());
        assert!(check_path_param("/v1/x/{tenant}", "tenant", "../etc").is_err());
        assert!(check_path_param("/v1/x/{version}", "version", "latest").is_ok());
        assert!(check_path_param("/v1/x/{version}", "version", "12").is_ok());
        assert!(check_path_param("/v1/x/{version}", "version", "99999999999999999999").is_err());
        assert!(check_path_param("/v1/x/{unknown}", "unknown", "a").is_err(), "unknown names are refused");
    }
}
