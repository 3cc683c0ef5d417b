//! Records that carry a tenant's data (a plugin's output, a tenant's own
//! benchmark values), kept in the control database sealed under the
//! tenant's data key: erasing the tenant makes them unreadable.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::App;
use crate::error::{Error, Result};

/// A sealed record as stored, hex-encoded. Empty when it could not be
/// sealed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Sealed {
    sealed_hex: String,
}

/// Seal `value` for `tenant` under `label` (what it is, bound into the
/// seal). Without a data key there is nowhere safe to keep it: it is
/// dropped, and [`open`] says so.
pub(crate) fn seal<T: Serialize>(app: &App, tenant: &str, label: &str, value: &T) -> Sealed {
    let plain = serde_json::to_vec(value).expect("records serialize");
    let sealed = app.vault.seal_for_tenant(tenant, label, &plain).unwrap_or_else(|e| {
        tracing::warn!(%label, error = %e, "a tenant's record cannot be sealed; it is dropped");
        Vec::new()
    });
    Sealed { sealed_hex: sealed.iter().map(|b| format!("{b:02x}")).collect() }
}

/// Open a sealed record; `None` when it could not be kept.
pub(crate) fn open<T: DeserializeOwned>(
    app: &App,
    tenant: &str,
    label: &str,
    stored: &Sealed,
) -> Result<Option<T>> {
    let hex = &stored.sealed_hex;
    let sealed: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Internal(format!("{label}: {e}")))?;
    if sealed.is_empty() {
        return Ok(None);
    }
    let plain = app.vault.open_for_tenant(tenant, label, &sealed)?;
    serde_json::from_slice(&plain).map(Some).map_err(|e| Error::Internal(format!("{label}: {e}")))
}
