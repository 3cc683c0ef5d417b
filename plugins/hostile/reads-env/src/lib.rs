//! Attack: look for secrets in the environment, arguments and working directory.
hostile_common::fixture!("reads-env", {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let args: Vec<String> = std::env::args().collect();
    let cwd = std::env::current_dir().ok();
    Err(format!("saw env={vars:?} args={args:?} cwd={cwd:?}").into())
});
