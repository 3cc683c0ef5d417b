//! The one `bindgen!` of the plugin world. Private: the crate's API is its
//! own types, and the WIT resources map to the capability modules' handles.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "kanon:plugin/plugin",
    // Every host function may trap: that is how a contract violation, a
    // limit or the deadline ends a run from inside a host call.
    imports: { default: trappable },
    with: {
        "kanon:plugin/data.dataset": crate::data::DatasetHandle,
        "kanon:plugin/data.scan": crate::data::ScanHandle,
        "kanon:plugin/gate.table": crate::gate::TableHandle,
    },
});

pub(crate) use kanon::plugin::{data, gate, types};
