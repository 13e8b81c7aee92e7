//! Streams one chat answer to stdout: the library in a few lines.
//!
//! ```text
//! MODEL_ID=/models/model.gguf cargo run --release --example chat -- "What is the capital of France?"
//! ```
//! `llm-pipeline chat` is the full tool (flags for every setting, conversations, usage and
//! speed); this shows what a service that embeds generation needs.

use std::io::Write;

use futures::StreamExt;
use llm_pipeline::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of France?".to_owned());
    let pipeline = load_async(AUTO, PipelineConfig::from_env()?.with_max_num_seqs(1)).await?;
    let request = ChatCompletionRequest::new("", vec![ChatMessage::user(question)])
        .with_max_tokens(128)
        .with_temperature(0.0);
    let mut answer = pipeline.chat_stream(request).await?;
    while let Some(chunk) = answer.next().await {
        for choice in chunk?.choices {
            print!("{}", choice.delta.content.unwrap_or_default());
            std::io::stdout().flush()?;
        }
    }
    println!();
    Ok(())
}
