//! What the user asked for: `PlanRequest` (machine, options, `-m`, `-smp`, defaults) and
//! `DeviceRequest` (`-device`), parsed from QEMU's keyval syntax or from JSON as libvirt sends it.

use crate::error::PlanError;
use serde::{Deserialize, Serialize};

/// Everything a plan depends on. Build it from the command line (or QMP) and hand it to
/// `Catalog::plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct PlanRequest {
    /// Machine type or alias (`q35`, `pc-i440fx-9.2`); `None` is the default machine (`pc`).
    pub machine: Option<String>,
    /// `-machine` options in command-line order (`("usb", "on")`). A `type` key names the
    /// machine when `machine` is `None`.
    pub options: Vec<(String, String)>,
    /// `-nodefaults`.
    pub nodefaults: bool,
    /// `-m` in bytes (aligned up to 8 KiB by the planner, as QEMU does).
    pub ram_size: u64,
    /// `-m maxmem=`: the most RAM memory hot-plug could reach; `None` means `ram_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ram_size: Option<u64>,
    /// `-m slots=`: memory hot-plug slots.
    #[serde(default)]
    pub ram_slots: u64,
    /// Guest physical address bits (what CPUID 0x80000008 will report); the memory map must
    /// fit. `None`: x86-64's architectural 52.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phys_bits: Option<u8>,
    /// `-smp` CPUs.
    pub cpus: u32,
    /// `-smp maxcpus=`; `None` means equal to `cpus`.
    pub max_cpus: Option<u32>,
    /// `-smp` sockets/dies/clusters/cores/threads as given (omitted ones are computed).
    pub smp: crate::smp::SmpKeys,
    /// `-device`, in command-line order.
    pub devices: Vec<DeviceRequest>,
    /// `-serial`: `None` keeps QEMU's default (a serial port unless `-nodefaults`),
    /// `Some(true)` means a serial backend was configured (port present even with
    /// `-nodefaults`), `Some(false)` is `-serial none`.
    pub serial: Option<bool>,
    /// `-parallel`, same convention as `serial`.
    pub parallel: Option<bool>,
    /// `-vga`: `None` default (std VGA unless `-nodefaults`), `Some(false)` is `-vga none`,
    /// `Some(true)` forces the default display even with `-nodefaults`.
    pub vga: Option<bool>,
    /// Default NIC (`-net nic -net user`): `None` default (present unless `-nodefaults`),
    /// `Some(false)` when `-nic none`, `-net none` or any `-netdev` was given.
    pub nic: Option<bool>,
    /// `-numa` options (and QMP `set-numa-node`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub numa: Vec<crate::numa::NumaArg>,
    /// The accelerator can run System Management Mode (QEMU's x86_machine_is_smm_enabled:
    /// always under qtest, where no vCPU runs and only the chipset's SMRAM registers and
    /// remapping matter; under KVM only where machina runs vCPUs in SMM). Decides what
    /// `smm=auto` means and whether `smm=on` is accepted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accel_smm: bool,
    /// `-global DRIVER.PROPERTY=VALUE`, in order: defaults for every device of the type
    /// (e.g. `PIIX4_PM.acpi-pci-hotplug-with-bridge-support`, which decides hot-plug).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub globals: Vec<GlobalProperty>,
}

/// One `-global`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalProperty {
    pub driver: String,
    pub property: String,
    pub value: String,
}

impl Default for PlanRequest {
    fn default() -> Self {
        PlanRequest {
            machine: None,
            options: Vec::new(),
            nodefaults: false,
            ram_size: 128 << 20,
            max_ram_size: None,
            ram_slots: 0,
            phys_bits: None,
            cpus: 1,
            max_cpus: None,
            smp: Default::default(),
            devices: Vec::new(),
            serial: None,
            parallel: None,
            vga: None,
            nic: None,
            numa: Vec::new(),
            accel_smm: false,
            globals: Vec::new(),
        }
    }
}

impl PlanRequest {
    /// A request for `machine` with QEMU's defaults (128 MiB, 1 CPU).
    pub fn new(machine: &str) -> Self {
        PlanRequest {
            machine: Some(machine.to_string()),
            ..Default::default()
        }
    }

    /// Parse a `-machine` argument (`q35,usb=on,acpi=off`) into `machine` and `options`.
    pub fn with_machine_arg(mut self, arg: &str) -> Self {
        for (i, part) in split_keyval(arg).into_iter().enumerate() {
            match part.split_once('=') {
                Some(("type", v)) => self.machine = Some(v.to_string()),
                Some((k, v)) => self.options.push((k.to_string(), v.to_string())),
                None if i == 0 => self.machine = Some(part),
                None => self.options.push((part, "on".to_string())),
            }
        }
        self
    }

    /// Append a `-device` argument (keyval or JSON).
    pub fn with_device(mut self, arg: &str) -> Result<Self, PlanError> {
        self.devices.push(DeviceRequest::parse(arg)?);
        Ok(self)
    }
}

/// Which syntax a `-device` argument used. QEMU reports duplicate ids differently for the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceSyntax {
    /// `driver,key=value,...` (QemuOpts).
    #[default]
    Keyval,
    /// `{"driver": ..., ...}` (libvirt) or QMP `device_add`.
    Json,
}

/// One `-device`: a driver and its properties as strings, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeviceRequest {
    pub driver: String,
    /// Properties including `id`, `bus` and `addr`; JSON booleans become `on`/`off`.
    pub properties: Vec<(String, String)>,
    #[serde(default)]
    pub syntax: DeviceSyntax,
    /// For the JSON form: the JSON type each property was given as, checked against the
    /// property's type as QEMU's input visitor does (`"multifunction": "on"` is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_kinds: Vec<(String, JsonKind)>,
}

/// The JSON type of a value given for a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JsonKind {
    Bool,
    Integer,
    /// A number with a fraction or exponent.
    Float,
    String,
    Null,
    /// An array or object.
    Compound,
}

/// Parse JSON text as QEMU's parser does for command-line JSON: a duplicate key at any
/// depth is an error (serde_json would keep the last one silently).
pub fn parse_json_strict(text: &str) -> Result<serde_json::Value, String> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Strict;
    impl<'de> Visitor<'de> for Strict {
        type Value = serde_json::Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Null)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(Seed)? {
                out.push(v);
            }
            Ok(serde_json::Value::Array(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some(k) = map.next_key::<String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom("duplicate key"));
                }
                let v = map.next_value_seed(Seed)?;
                out.insert(k, v);
            }
            Ok(serde_json::Value::Object(out))
        }
    }
    struct Seed;
    impl<'de> serde::de::DeserializeSeed<'de> for Seed {
        type Value = serde_json::Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Strict)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = de.deserialize_any(Strict).map_err(|e| {
        // QEMU's wording; the position helps the user find the key.
        if e.to_string().starts_with("duplicate key") {
            "JSON parse error, duplicate key".to_string()
        } else {
            format!("JSON parse error, {e}")
        }
    })?;
    de.end().map_err(|e| format!("JSON parse error, {e}"))?;
    Ok(value)
}

impl DeviceRequest {
    /// A keyval-style request with no properties.
    pub fn new(driver: &str) -> Self {
        DeviceRequest {
            driver: driver.to_string(),
            properties: Vec::new(),
            syntax: DeviceSyntax::Keyval,
            json_kinds: Vec::new(),
        }
    }

    /// Builder: add a property.
    pub fn prop(mut self, key: &str, value: &str) -> Self {
        self.properties.push((key.to_string(), value.to_string()));
        self
    }

    /// Parse `virtio-net-pci,bus=rp1,addr=0x2.0x1` or
    /// `{"driver":"pcie-root-port","port":16,"chassis":1,"id":"pci.1","addr":"0x2"}`.
    ///
    /// Keyval follows QEMU: the first element without `=` is the driver, `,,` is a literal
    /// comma, a bare key means `key=on`. In JSON, a number for `addr` is a raw devfn as QEMU
    /// reads it (slot << 3 | function).
    pub fn parse(arg: &str) -> Result<DeviceRequest, PlanError> {
        let trimmed = arg.trim_start();
        if trimmed.starts_with('{') {
            return Self::parse_json(trimmed);
        }
        let mut req = DeviceRequest::default();
        for (i, part) in split_keyval(arg).into_iter().enumerate() {
            match part.split_once('=') {
                Some(("driver", v)) => req.driver = v.to_string(),
                Some((k, v)) => req.properties.push((k.to_string(), v.to_string())),
                None if i == 0 => req.driver = part,
                None => req.properties.push((part, "on".to_string())),
            }
        }
        if req.driver.is_empty() {
            return Err(PlanError::MissingDriver);
        }
        Ok(req)
    }

    fn parse_json(text: &str) -> Result<DeviceRequest, PlanError> {
        let value = parse_json_strict(text).map_err(PlanError::BadDeviceSyntax)?;
        Self::from_json_object(&value)
    }

    /// A request from a JSON object (JSON `-device`, QMP `device_add`). Values keep their
    /// JSON types for the planner's checks; `driver`, `id` and `bus` that are not strings are
    /// ignored as QEMU ignores them (so a missing `driver` is reported).
    pub fn from_json_object(value: &serde_json::Value) -> Result<DeviceRequest, PlanError> {
        let obj = value.as_object().ok_or_else(|| {
            PlanError::BadDeviceSyntax("Invalid parameter type, expected: object".to_string())
        })?;
        let mut req = DeviceRequest {
            syntax: DeviceSyntax::Json,
            ..Default::default()
        };
        for (k, v) in obj {
            if matches!(k.as_str(), "driver" | "id" | "bus") {
                if let Some(s) = v.as_str() {
                    if k == "driver" {
                        req.driver = s.to_string();
                    } else {
                        req.properties.push((k.clone(), s.to_string()));
                    }
                }
                continue;
            }
            let (s, kind) = match v {
                serde_json::Value::String(s) => (s.clone(), JsonKind::String),
                serde_json::Value::Bool(b) => {
                    (if *b { "on" } else { "off" }.to_string(), JsonKind::Bool)
                }
                serde_json::Value::Number(n) if k == "addr" => {
                    let devfn = n.as_i64().ok_or(PlanError::DevfnOutOfRange)?;
                    match devfn {
                        -1 => continue,
                        0..=255 => (
                            format!("{:x}.{:x}", devfn >> 3, devfn & 7),
                            JsonKind::String,
                        ),
                        _ => return Err(PlanError::DevfnOutOfRange),
                    }
                }
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                    (n.to_string(), JsonKind::Integer)
                }
                serde_json::Value::Number(n) => (n.to_string(), JsonKind::Float),
                serde_json::Value::Null => (String::new(), JsonKind::Null),
                other => (other.to_string(), JsonKind::Compound),
            };
            req.properties.push((k.clone(), s));
            req.json_kinds.push((k.clone(), kind));
        }
        if req.driver.is_empty() {
            return Err(PlanError::MissingDriver);
        }
        Ok(req)
    }

    /// The JSON type `key` was given as (JSON requests only).
    pub fn json_kind(&self, key: &str) -> Option<JsonKind> {
        self.json_kinds
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, kind)| *kind)
    }

    /// Last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `id=`.
    pub fn id(&self) -> Option<&str> {
        self.get("id")
    }

    /// `-device TYPE,help` (or `?`).
    pub fn wants_help(&self) -> bool {
        self.driver == "help"
            || self.driver == "?"
            || self.properties.iter().any(|(k, _)| k == "help" || k == "?")
    }
}

/// Split QEMU keyval text on single commas; `,,` stands for a literal comma.
pub fn split_keyval(arg: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = arg.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts.retain(|p| !p.is_empty());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyval_forms() {
        type Row<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let table: &[Row] = &[
            ("e1000", "e1000", &[]),
            (
                "virtio-net-pci,bus=rp1,addr=0x2.0x1",
                "virtio-net-pci",
                &[("bus", "rp1"), ("addr", "0x2.0x1")],
            ),
            ("driver=VGA,id=v", "VGA", &[("id", "v")]),
            (
                "pci-bridge,multifunction",
                "pci-bridge",
                &[("multifunction", "on")],
            ),
            ("x,serial=a,,b", "x", &[("serial", "a,b")]),
        ];
        for (arg, driver, props) in table {
            let r = DeviceRequest::parse(arg).unwrap();
            assert_eq!(r.driver, *driver, "{arg}");
            let want: Vec<(String, String)> = props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(r.properties, want, "{arg}");
            assert_eq!(r.syntax, DeviceSyntax::Keyval);
        }
    }

    #[test]
    fn json_form() {
        let r = DeviceRequest::parse(
            r#"{"driver":"pcie-root-port","port":16,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x2"}"#,
        )
        .unwrap();
        assert_eq!(r.driver, "pcie-root-port");
        assert_eq!(r.get("port"), Some("16"));
        assert_eq!(r.get("multifunction"), Some("on"));
        assert_eq!(r.get("addr"), Some("0x2"));
        assert_eq!(r.syntax, DeviceSyntax::Json);
        let r = DeviceRequest::parse(r#"{"driver":"e1000","addr":17}"#).unwrap();
        assert_eq!(r.get("addr"), Some("2.1"));
        assert_eq!(
            DeviceRequest::parse(r#"{"driver":"e1000","addr":300}"#).unwrap_err(),
            PlanError::DevfnOutOfRange
        );
        assert_eq!(
            DeviceRequest::parse(r#"{"id":"x"}"#).unwrap_err(),
            PlanError::MissingDriver
        );
    }

    #[test]
    fn machine_arg() {
        let r = PlanRequest::default().with_machine_arg("q35,usb=on,sata=off");
        assert_eq!(r.machine.as_deref(), Some("q35"));
        assert_eq!(r.options.len(), 2);
        let r = PlanRequest::default().with_machine_arg("type=pc,acpi=off");
        assert_eq!(r.machine.as_deref(), Some("pc"));
    }
}
