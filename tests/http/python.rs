//! The official OpenAI Python client against the server (`openai_client.py`): structured
//! output validated by Python's `jsonschema`, a weather round trip whole and streamed, a named
//! function, and a refused schema. `cargo xtask test` provides the client's Python
//! (`LLM_PIPELINE_CLIENT_PYTHON`, a virtual environment with pinned `openai` and `jsonschema`).

use std::process::Command;

use super::{EXCLUSIVE, TOKEN};
use crate::tools::TOOLS_SERVER;

#[tokio::test]
async fn the_official_python_client_gets_schemas_and_tool_calls() {
    let python = std::env::var_os("LLM_PIPELINE_CLIENT_PYTHON").expect(
        "LLM_PIPELINE_CLIENT_PYTHON names a Python with `openai` and `jsonschema`; \
         `cargo xtask test` sets it",
    );
    let _turn = EXCLUSIVE.lock().await;
    let base = format!("http://{}/v1", TOOLS_SERVER.addr);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/http/openai_client.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(base)
            .arg(TOKEN)
            .output()
            .expect("the client's Python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "the Python client failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}
