//! Attack: read a host file.
hostile_common::fixture!("reads-file", {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    Err(passwd.into())
});
