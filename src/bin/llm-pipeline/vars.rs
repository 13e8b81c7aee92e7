//! Flags that are also environment variables: every setting of the pipeline and of the HTTP
//! server has a Livepeer (or our own) variable, and each gets a `--flag` of the same meaning.
//!
//! The flags are declared from one table, so that a flag, its variable, its help and its default
//! cannot drift apart: the default printed by `--help` is the configuration's own default, and
//! values are parsed and checked once, by [`PipelineConfig::from_lookup`] and
//! [`ServerConfig::from_lookup`], which name the variable at fault. A flag wins over its variable.

use std::collections::HashMap;

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use llm_pipeline::core::config::PipelineConfig;
use llm_pipeline::server::ServerConfig;

/// One setting: its flag (without `--`), variable, value name, help, and default as text.
pub(crate) struct Var {
    pub(crate) flag: &'static str,
    pub(crate) var: &'static str,
    value: &'static str,
    help: &'static str,
    default: fn() -> Option<String>,
}

fn pipeline() -> PipelineConfig {
    PipelineConfig::default()
}

fn server() -> ServerConfig {
    ServerConfig::default()
}

fn secs(d: std::time::Duration) -> Option<String> {
    Some(d.as_secs_f64().to_string())
}

/// The pipeline's settings (Livepeer's `llm` runner variables first).
pub(crate) const PIPELINE: &[Var] = &[
    Var {
        flag: "model",
        var: "MODEL_ID",
        value: "ID_OR_PATH",
        help: "The model: a Hugging Face id (`org/name`, `org/name:Q4_K_M` for one GGUF of a \
               repository), a folder of safetensors or an ONNX export, or a .gguf file",
        default: || None,
    },
    Var {
        flag: "model-dir",
        var: "MODEL_DIR",
        value: "DIR",
        help: "Where models are looked up and downloaded to (the Hugging Face cache layout)",
        default: || Some(pipeline().model_dir.display().to_string()),
    },
    Var {
        flag: "use-8bit",
        var: "USE_8BIT",
        value: "BOOL",
        help: "Quantize the weights to 8 bits at load time where the backend can",
        default: || Some("false".into()),
    },
    Var {
        flag: "max-num-batched-tokens",
        var: "MAX_NUM_BATCHED_TOKENS",
        value: "N",
        help: "Tokens per engine step: prompt chunks plus one per decoding sequence",
        default: || Some(pipeline().max_num_batched_tokens.to_string()),
    },
    Var {
        flag: "max-num-seqs",
        var: "MAX_NUM_SEQS",
        value: "N",
        help: "Sequences generated at once (the batch); with the KV budget, the capacity to \
               declare to an orchestrator",
        default: || Some(pipeline().max_num_seqs.to_string()),
    },
    Var {
        flag: "max-model-len",
        var: "MAX_MODEL_LEN",
        value: "N",
        help: "The longest sequence, prompt plus answer, in tokens",
        default: || Some(pipeline().max_model_len.to_string()),
    },
    Var {
        flag: "gpu-memory-utilization",
        var: "GPU_MEMORY_UTILIZATION",
        value: "FRACTION",
        help: "The share of GPU memory the backend may use, weights and KV cache",
        default: || Some(pipeline().gpu_memory_utilization.to_string()),
    },
    Var {
        flag: "tensor-parallel-size",
        var: "TENSOR_PARALLEL_SIZE",
        value: "N",
        help: "GPUs a layer is split across (1: one GPU per runner; run one runner per GPU)",
        default: || Some(pipeline().tensor_parallel_size.to_string()),
    },
    Var {
        flag: "pipeline-parallel-size",
        var: "PIPELINE_PARALLEL_SIZE",
        value: "N",
        help: "GPUs the layers are distributed over (1: one GPU per runner)",
        default: || Some(pipeline().pipeline_parallel_size.to_string()),
    },
    Var {
        flag: "cpu-kv-cache-space",
        var: "CPU_KV_CACHE_SPACE",
        value: "GIB",
        help: "GiB of KV cache for CPU backends",
        default: || Some((pipeline().cpu_kv_cache_bytes >> 30).to_string()),
    },
    Var {
        flag: "threads",
        var: "NUM_THREADS",
        value: "N",
        help: "CPU threads for compute [default: the available cores]",
        default: || None,
    },
    Var {
        flag: "sampling-threads",
        var: "SAMPLING_THREADS",
        value: "N",
        help: "Threads that sample a step's logits rows in parallel [default: as --threads]",
        default: || None,
    },
    Var {
        flag: "max-queue",
        var: "MAX_QUEUE",
        value: "N",
        help: "Requests that may wait beyond the running ones; more are refused with 429",
        default: || Some(pipeline().max_queue.to_string()),
    },
    Var {
        flag: "enable-prefix-caching",
        var: "ENABLE_PREFIX_CACHING",
        value: "BOOL",
        help: "Reuse the KV cache of prompt prefixes computed for earlier requests",
        default: || Some(pipeline().prefix_caching.to_string()),
    },
    Var {
        flag: "kv-unified",
        var: "KV_UNIFIED",
        value: "BOOL",
        help: "llama.cpp: when the KV budget holds fewer MAX_MODEL_LEN streams than MAX_NUM_SEQS, \
               share one pool of cells among all sequences (more at once, slower attention)",
        default: || Some(pipeline().kv_unified.to_string()),
    },
    Var {
        flag: "speculative-tokens",
        var: "SPECULATIVE_TOKENS",
        value: "N",
        help: "Draft tokens per step of speculative decoding by prompt lookup, made while few \
               sequences run (0: off); answers are the same either way",
        default: || Some(pipeline().speculative_tokens.to_string()),
    },
    Var {
        flag: "chat-template",
        var: "CHAT_TEMPLATE",
        value: "FILE",
        help: "A Jinja chat template file replacing the model's own",
        default: || None,
    },
    Var {
        flag: "tool-call-parser",
        var: "TOOL_CALL_PARSER",
        value: "FORMAT",
        help: "The tool-call format: hermes, llama3_json, mistral or json [default: the one \
               the chat template teaches]",
        default: || None,
    },
    Var {
        flag: "price-per-unit",
        var: "PRICE_PER_UNIT",
        value: "N",
        help: "Livepeer price per unit of max_tokens, for the quote and the charge",
        default: || Some("0".into()),
    },
    Var {
        flag: "pixels-per-unit",
        var: "PIXELS_PER_UNIT",
        value: "N",
        help: "Livepeer units: tokens per priced unit",
        default: || Some("1".into()),
    },
    Var {
        flag: "hf-endpoint",
        var: "HF_ENDPOINT",
        value: "URL",
        help: "The Hugging Face Hub (or a mirror) models are downloaded from \
               [default: https://huggingface.co]",
        default: || None,
    },
    Var {
        flag: "hf-offline",
        var: "HF_HUB_OFFLINE",
        value: "BOOL",
        help: "Never download: only models already in the model folder load",
        default: || Some("false".into()),
    },
];

/// The HTTP server's settings.
pub(crate) const SERVER: &[Var] = &[
    Var {
        flag: "host",
        var: "HOST",
        value: "ADDR",
        help: "The address to listen on",
        default: || Some(server().host.to_string()),
    },
    Var {
        flag: "port",
        var: "PORT",
        value: "PORT",
        help: "The port to listen on",
        default: || Some(server().port.to_string()),
    },
    Var {
        flag: "api-key",
        var: "AUTH_TOKEN",
        value: "TOKEN",
        help: "The bearer token every request but /health must carry (none: no authentication)",
        default: || None,
    },
    Var {
        flag: "max-request-bytes",
        var: "MAX_REQUEST_BYTES",
        value: "N",
        help: "The largest request body",
        default: || Some(server().max_request_bytes.to_string()),
    },
    Var {
        flag: "header-timeout",
        var: "HTTP_HEADER_TIMEOUT",
        value: "SECS",
        help: "Seconds a request's headers may take to arrive",
        default: || secs(server().header_timeout),
    },
    Var {
        flag: "body-timeout",
        var: "HTTP_BODY_TIMEOUT",
        value: "SECS",
        help: "Seconds a request's body may take to arrive",
        default: || secs(server().body_timeout),
    },
    Var {
        flag: "idle-timeout",
        var: "HTTP_IDLE_TIMEOUT",
        value: "SECS",
        help: "Seconds a keep-alive connection may wait for its next request",
        default: || secs(server().idle_timeout),
    },
    Var {
        flag: "max-connections",
        var: "MAX_CONNECTIONS",
        value: "N",
        help: "Connections open at once",
        default: || Some(server().max_connections.to_string()),
    },
];

/// The values of a table's flags (or their variables), by variable name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Values(HashMap<&'static str, String>);

impl Values {
    /// The value of `var`: the flag's or the variable's as clap read them, else the process
    /// environment's (variables without a flag, such as `HF_TOKEN`).
    pub(crate) fn get(&self, var: &str) -> Option<String> {
        self.0.get(var).cloned().or_else(|| std::env::var(var).ok())
    }

    /// Sets `var`, as a flag would.
    #[cfg(test)]
    pub(crate) fn set(&mut self, var: &'static str, value: impl Into<String>) {
        self.0.insert(var, value.into());
    }

    fn read(table: &[Var], matches: &ArgMatches) -> Self {
        Self(
            table
                .iter()
                .filter_map(|v| Some((v.var, matches.get_one::<String>(v.flag)?.clone())))
                .collect(),
        )
    }
}

fn augment(table: &[Var], command: Command) -> Command {
    command.args(table.iter().map(|v| {
        let help = match (v.default)() {
            Some(default) => format!("{} [default: {default}]", v.help),
            None => v.help.to_owned(),
        };
        Arg::new(v.flag)
            .long(v.flag)
            .env(v.var)
            .value_name(v.value)
            .hide_env_values(v.var == "AUTH_TOKEN")
            .help(help)
    }))
}

/// Rewrites a configuration error about a variable so that it names the flag too.
pub(crate) fn name_flag(table: &[Var], error: llm_pipeline::core::Error) -> anyhow::Error {
    if let llm_pipeline::core::Error::Config { variable, .. } = &error
        && let Some(v) = table.iter().find(|v| v.var == *variable)
    {
        return anyhow::anyhow!("{error} (--{} or {})", v.flag, v.var);
    }
    error.into()
}

macro_rules! flag_group {
    ($name:ident, $table:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Default)]
        pub(crate) struct $name(pub(crate) Values);

        impl FromArgMatches for $name {
            fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
                Ok(Self(Values::read($table, matches)))
            }

            fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
                *self = Self::from_arg_matches(matches)?;
                Ok(())
            }
        }

        impl Args for $name {
            fn augment_args(command: Command) -> Command {
                augment($table, command)
            }

            fn augment_args_for_update(command: Command) -> Command {
                augment($table, command)
            }
        }
    };
}

flag_group!(
    PipelineFlags,
    PIPELINE,
    "The pipeline's flags (`PIPELINE`), read into a [`PipelineConfig`]."
);
flag_group!(
    ServerFlags,
    SERVER,
    "The HTTP server's flags (`SERVER`), read into a [`ServerConfig`]."
);

impl PipelineFlags {
    /// The pipeline's configuration: flags, then variables, then Livepeer's defaults.
    pub(crate) fn config(&self) -> anyhow::Result<PipelineConfig> {
        PipelineConfig::from_lookup(|k| self.0.get(k)).map_err(|e| name_flag(PIPELINE, e))
    }
}

impl ServerFlags {
    /// The server's configuration: flags, then variables, then defaults.
    pub(crate) fn config(&self) -> anyhow::Result<ServerConfig> {
        ServerConfig::from_lookup(|k| self.0.get(k)).map_err(|e| name_flag(SERVER, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each default that `--help` prints is the configuration's: setting a variable to its
    /// printed default changes nothing.
    #[test]
    fn printed_defaults_are_the_configurations() {
        let nothing = |_: &str| None;
        for v in PIPELINE {
            let Some(default) = (v.default)() else {
                continue;
            };
            let set = PipelineConfig::from_lookup(|k| (k == v.var).then(|| default.clone()));
            assert_eq!(
                set.unwrap(),
                PipelineConfig::from_lookup(nothing).unwrap(),
                "{}",
                v.var
            );
        }
        for v in SERVER {
            let Some(default) = (v.default)() else {
                continue;
            };
            let set = ServerConfig::from_lookup(|k| (k == v.var).then(|| default.clone()));
            assert_eq!(
                format!("{:?}", set.unwrap()),
                format!("{:?}", ServerConfig::from_lookup(nothing).unwrap()),
                "{}",
                v.var
            );
        }
    }

    #[test]
    fn every_variable_the_configuration_reads_has_one_flag() {
        let mut seen = std::collections::HashSet::new();
        for v in PIPELINE.iter().chain(SERVER) {
            assert!(seen.insert(v.var), "{} twice", v.var);
            assert!(seen.insert(v.flag), "--{} twice", v.flag);
        }
        // A value that does not parse is named by flag and variable.
        let mut flags = PipelineFlags::default();
        flags.0.set("MAX_NUM_SEQS", "many");
        let error = flags.config().unwrap_err().to_string();
        assert!(
            error.contains("--max-num-seqs") && error.contains("MAX_NUM_SEQS"),
            "{error}"
        );
    }
}
