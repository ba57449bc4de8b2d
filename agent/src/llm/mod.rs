//! Client for the OpenAI chat-completions API as OpenRouter (and llama.cpp's server) serve
//! it: messages, tool calling, streaming with usage, attribution headers, the `models`
//! fallback list, retries with backoff and `Retry-After`, request timeouts.

pub mod client;
pub mod error;
pub mod stream;
pub mod types;

pub use client::{Attribution, ChatClient, ChatInput, ClientOptions, RetryPolicy, http_client};
pub use error::LlmError;
pub use types::{Completion, Message, ToolCall, ToolChoice, ToolDef, Usage};
