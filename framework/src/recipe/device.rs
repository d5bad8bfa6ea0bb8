//! Where runs execute: "auto", "cpu", "cuda" or "cuda:N".

use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The compute device a recipe asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The first CUDA device when the binary has CUDA and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(DeviceSpec::Cuda).ok_or_else(|| {
                    format!("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", found \"{s}\"")
                })
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DeviceSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DeviceSpec".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "\"auto\" (CUDA when compiled in and present, else CPU), \"cpu\", \"cuda\" or \"cuda:N\".",
            "type": "string",
            "pattern": "^(auto|cpu|cuda(:[0-9]+)?)$"
        })
    }
}

impl DeviceSpec {
    /// Opens the device, or explains why it cannot be used.
    /// Open it once per process: each opening of a CUDA device is a stream of its own.
    pub fn open(self) -> candle_core::Result<candle_core::Device> {
        let device = match self {
            DeviceSpec::Cpu => return Ok(candle_core::Device::Cpu),
            DeviceSpec::Auto => candle_core::Device::cuda_if_available(0)?,
            DeviceSpec::Cuda(n) if candle_core::utils::cuda_is_available() => {
                candle_core::Device::new_cuda(n)?
            }
            DeviceSpec::Cuda(n) => {
                return Err(candle_core::Error::Msg(format!(
                    "device \"cuda:{n}\" was asked for, but this runner was built without CUDA \
                 (rebuild with `cargo build --release --features cuda`, see the README)"
                )));
            }
        };
        #[cfg(feature = "cuda")]
        if let candle_core::Device::Cuda(cuda) = &device {
            crate::ops::prepare_cuda(cuda)?;
        }
        Ok(device)
    }
}
