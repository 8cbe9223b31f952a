//! request: the OVH install body (`POST /dedicated/server/{serviceName}/install/start`),
//! accepted verbatim, and its validation into an [`InstallSpec`].
//!
//! The body is OVH's legacy shape: `templateName`, `partitionSchemeName`,
//! `details.customHostname` and a `userMetadata` list of `{key, value}` strings. Every check
//! happens here, before anything is stored, so a bad request never becomes an install.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::SpecError;
use crate::secret::Secret;

/// BYOLinux: the image's files copied into the operator's storage layout (software RAID, LVM,
/// several disks), OVH's `byolinux_64`.
pub const TEMPLATE_NAME: &str = "byolinux_64";
/// BYOI: the image written to one disk as a block copy, its partition grown (OVH's `byoi_64`).
pub const TEMPLATE_BYOI: &str = "byoi_64";
/// The templates byol installs.
pub const TEMPLATES: &[&str] = &[TEMPLATE_NAME, TEMPLATE_BYOI];

/// The request body exactly as OVH's API takes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallRequest {
    pub template_name: String,
    #[serde(default)]
    pub partition_scheme_name: Option<String>,
    #[serde(default)]
    pub details: Details,
    #[serde(default)]
    pub user_metadata: Vec<MetadataEntry>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Details {
    #[serde(default)]
    pub custom_hostname: Option<String>,
    /// OVH's legacy API also takes the disk group here; `userMetadata` wins when both are given.
    #[serde(default)]
    pub disk_group_id: Option<serde_json::Value>,
}

#[derive(Clone, Deserialize, Serialize)]
pub struct MetadataEntry {
    pub key: String,
    pub value: String,
}

impl std::fmt::Debug for MetadataEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<{} bytes>", self.key, self.value.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    Qcow2,
    Raw,
}

impl ImageType {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::Qcow2 => "qcow2",
            ImageType::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl ChecksumType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "md5" => ChecksumType::Md5,
            "sha1" => ChecksumType::Sha1,
            "sha256" => ChecksumType::Sha256,
            "sha512" => ChecksumType::Sha512,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumType::Md5 => "md5",
            ChecksumType::Sha1 => "sha1",
            ChecksumType::Sha256 => "sha256",
            ChecksumType::Sha512 => "sha512",
        }
    }
    /// Length of the digest in hexadecimal characters.
    pub fn hex_len(self) -> usize {
        match self {
            ChecksumType::Md5 => 32,
            ChecksumType::Sha1 => 40,
            ChecksumType::Sha256 => 64,
            ChecksumType::Sha512 => 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    #[serde(rename = "type")]
    pub kind: ChecksumType,
    /// Lowercase hex.
    pub hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    pub name: String,
    pub value: Secret,
}

/// cloud-init user data, as given (the agent writes [`UserData::bytes`] to `user_data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserData {
    /// `base64` or `plain`: how the operator sent it.
    pub encoding: String,
    /// The value exactly as sent.
    pub value: Secret,
}

impl UserData {
    /// The decoded user data.
    pub fn bytes(&self) -> Vec<u8> {
        match self.encoding.as_str() {
            "base64" => decode_base64(self.value.expose()).unwrap_or_default(),
            _ => self.value.expose().as_bytes().to_vec(),
        }
    }
}

/// A validated install: what the server stores and the agent receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallSpec {
    pub template: String,
    pub partition_scheme: String,
    pub hostname: Option<String>,
    pub image_url: String,
    pub image_type: ImageType,
    pub checksum: Option<Checksum>,
    pub http_headers: Vec<HttpHeader>,
    pub user_data: Option<UserData>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub ssh_key: Option<String>,
    pub disk_group_id: u32,
    /// byol's own `hookTimeout` key: this install's limit for make_image_bootable.sh, in
    /// seconds (none: the machine's or the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_timeout_seconds: Option<u64>,
    /// `byolinux_64`: the storage layout the image's files go into (checked rows); none for
    /// `byoi_64` (block copy to one disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// OVH's `efiBootloaderPath` (`\efi\debian\grubx64.efi`): on UEFI, the loader the boot
    /// entry and the removable path start (none: the one the hook installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi_bootloader_path: Option<String>,
}

/// The layout of a `byolinux_64` install, as the agent gets it: the checked rows in OVH's
/// form (the agent checks them again and plans them for the disks it finds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The scheme it came from: `default`, a stored scheme's name, or `custom` (rows given in
    /// the request).
    pub scheme: String,
    pub disk_group_id: u32,
    /// How many disks of the group (none: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<u32>,
    pub layout: Vec<crate::storage::PartitionSpec>,
}

impl StorageSpec {
    /// The rows checked again, as the plan takes them.
    pub fn checked(&self) -> Result<crate::storage::Layout, crate::storage::OvhError> {
        Ok(crate::storage::Layout {
            disk_group_id: self.disk_group_id,
            disks: self.disks,
            rows: crate::storage::validate_layout(&self.layout, self.disk_group_id)?,
        })
    }
}

/// A checked row as OVH's API writes it.
pub fn row_spec(r: &crate::storage::Row) -> crate::storage::PartitionSpec {
    use crate::storage::{Extras, Fs, Named, PartitionSpec};
    PartitionSpec {
        mount_point: r.mount.as_str().into(),
        file_system: r.fs.as_str().into(),
        size: r.size_mib,
        raid_level: (r.fs != Fs::Swap).then(|| serde_json::json!(r.raid.number())),
        extras: r.lv.as_ref().map(|n| Extras {
            lv: Some(Named {
                name: Some(n.clone()),
            }),
            zp: None,
        }),
    }
}

/// The range a hook timeout may take.
pub const HOOK_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 60..=86400;

/// A hook timeout as written (`45m`), checked against [`HOOK_TIMEOUT_RANGE`].
pub fn parse_hook_timeout(s: &str) -> Result<u64, String> {
    let v = crate::duration::parse_duration(s)?;
    if !HOOK_TIMEOUT_RANGE.contains(&v) {
        return Err(format!("`{}` is outside 1m to 24h", s.trim()));
    }
    Ok(v)
}

const KNOWN_KEYS: &[&str] = &[
    "imageURL",
    "imageType",
    "imageCheckSum",
    "imageCheckSumType",
    "configDriveUserData",
    "configDriveMetadata",
    "sshKey",
    "diskGroupId",
    "hookTimeout",
    "efiBootloaderPath",
    "httpHeaders{N}Key",
    "httpHeaders{N}Value",
];

impl InstallRequest {
    /// Parse a body (JSON bytes) and validate it.
    pub fn parse_and_validate(body: &[u8]) -> Result<InstallSpec, SpecError> {
        let req: InstallRequest = serde_json::from_slice(body).map_err(|e| {
            // serde's message names the field and position but never echoes values.
            SpecError::BadJson(e.to_string())
        })?;
        req.validate()
    }

    /// [`InstallRequest::validate_with`] knowing only the built-in `default` scheme.
    pub fn validate(&self) -> Result<InstallSpec, SpecError> {
        self.validate_with(&|_| None)
    }

    /// Checks the body; `schemes` gives a stored scheme's rows by name (`default` is byol's
    /// own and never asked).
    pub fn validate_with(
        &self,
        schemes: &dyn Fn(&str) -> Option<Vec<crate::storage::PartitionSpec>>,
    ) -> Result<InstallSpec, SpecError> {
        if !TEMPLATES.contains(&self.template_name.as_str()) {
            return Err(SpecError::UnknownTemplate(clip(&self.template_name)));
        }
        let partition_scheme = self
            .partition_scheme_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let scheme_rows = match partition_scheme.as_str() {
            "default" => crate::storage::default_layout()
                .iter()
                .map(row_spec)
                .collect(),
            name => match schemes(name) {
                Some(rows) => rows,
                None => return Err(SpecError::UnknownPartitionScheme(clip(name))),
            },
        };
        let hostname = match &self.details.custom_hostname {
            Some(h) if !h.is_empty() => Some(validate_hostname(h)?),
            _ => None,
        };

        let mut meta: BTreeMap<&str, &str> = BTreeMap::new();
        let mut headers: BTreeMap<u32, (Option<&str>, Option<&str>)> = BTreeMap::new();
        for e in &self.user_metadata {
            if let Some((n, is_key)) = header_key(&e.key) {
                let slot = headers.entry(n).or_default();
                let field = if is_key { &mut slot.0 } else { &mut slot.1 };
                if field.replace(e.value.as_str()).is_some() {
                    return Err(SpecError::DuplicateKey(clip(&e.key)));
                }
                continue;
            }
            if !KNOWN_KEYS.contains(&e.key.as_str()) {
                return Err(SpecError::UnknownKey {
                    key: clip(&e.key),
                    hint: unknown_key_hint(&e.key),
                });
            }
            if meta.insert(e.key.as_str(), e.value.as_str()).is_some() {
                return Err(SpecError::DuplicateKey(clip(&e.key)));
            }
        }

        // The guide's pairing rule comes before anything about the values.
        let checksum = match (meta.get("imageCheckSum"), meta.get("imageCheckSumType")) {
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => return Err(SpecError::ChecksumPairing),
            (Some(sum), Some(kind)) => Some(validate_checksum(sum, kind)?),
        };

        let image_url = match meta.get("imageURL") {
            Some(u) if !u.trim().is_empty() => validate_url(u)?,
            _ => return Err(SpecError::MissingImageUrl),
        };
        let image_type = match meta.get("imageType").copied() {
            None | Some("qcow2") => ImageType::Qcow2,
            Some("raw") => ImageType::Raw,
            Some(other) => return Err(SpecError::UnknownImageType(clip(other))),
        };

        let mut http_headers = Vec::new();
        for (n, (k, v)) in headers {
            let (k, v) = match (k, v) {
                (Some(k), Some(v)) => (k, v),
                (Some(_), None) => {
                    return Err(SpecError::UnpairedHeader {
                        n: n.to_string(),
                        have: "Key",
                        missing: "Value",
                    });
                }
                (None, Some(_)) => {
                    return Err(SpecError::UnpairedHeader {
                        n: n.to_string(),
                        have: "Value",
                        missing: "Key",
                    });
                }
                (None, None) => continue,
            };
            if k.is_empty() || !k.bytes().all(is_tchar) {
                return Err(SpecError::BadHeaderName {
                    n: n.to_string(),
                    name: clip(k),
                });
            }
            if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(SpecError::BadHeaderValue { n: n.to_string() });
            }
            http_headers.push(HttpHeader {
                name: k.to_string(),
                value: Secret::new(v),
            });
        }

        let user_data = match meta.get("configDriveUserData") {
            Some(v) if !v.is_empty() => Some(validate_user_data(v)?),
            _ => None,
        };
        let metadata = match meta.get("configDriveMetadata") {
            Some(v) if !v.trim().is_empty() => match serde_json::from_str::<serde_json::Value>(v) {
                Ok(serde_json::Value::Object(m)) => Some(m),
                Ok(other) => {
                    return Err(SpecError::BadMetadata(format!(
                        "got a JSON {}",
                        json_kind(&other)
                    )));
                }
                Err(e) => return Err(SpecError::BadMetadata(e.to_string())),
            },
            _ => None,
        };
        let ssh_key = match meta.get("sshKey") {
            Some(k) if !k.trim().is_empty() => Some(validate_ssh_key(k)?),
            _ => None,
        };
        let disk_group_id = match (meta.get("diskGroupId"), &self.details.disk_group_id) {
            (Some(v), _) => parse_disk_group(v)?,
            (None, Some(serde_json::Value::Number(n))) => parse_disk_group(&n.to_string())?,
            (None, Some(serde_json::Value::String(s))) => parse_disk_group(s)?,
            (None, Some(serde_json::Value::Null)) | (None, None) => 1,
            (None, Some(other)) => return Err(SpecError::BadDiskGroup(clip(&other.to_string()))),
        };

        let hook_timeout_seconds = match meta.get("hookTimeout") {
            Some(v) if !v.trim().is_empty() => {
                Some(parse_hook_timeout(v).map_err(|m| SpecError::BadHookTimeout(clip(&m)))?)
            }
            _ => None,
        };

        let efi_bootloader_path = match meta.get("efiBootloaderPath") {
            Some(p) if !p.trim().is_empty() => {
                Some(check_efi_path(p.trim()).map_err(|why| SpecError::BadEfiPath(clip(p), why))?)
            }
            _ => None,
        };

        let storage = if self.template_name == TEMPLATE_NAME {
            let layout = crate::storage::validate_layout(&scheme_rows, disk_group_id)
                .map_err(|e| SpecError::Storage(e.message))?;
            Some(StorageSpec {
                scheme: partition_scheme.clone(),
                disk_group_id,
                disks: None,
                layout: layout.iter().map(row_spec).collect(),
            })
        } else {
            None
        };

        Ok(InstallSpec {
            storage,
            template: self.template_name.clone(),
            partition_scheme,
            hostname,
            image_url,
            image_type,
            checksum,
            http_headers,
            user_data,
            metadata,
            ssh_key,
            disk_group_id,
            hook_timeout_seconds,
            efi_bootloader_path,
        })
    }
}

/// An `efiBootloaderPath` as the firmware writes paths: `\`-separated from the ESP's root,
/// ending in `.efi`; `/` accepted and turned into `\`.
fn check_efi_path(p: &str) -> Result<String, &'static str> {
    let p = p.replace('/', "\\");
    if !p.starts_with('\\') {
        return Err("it must start with `\\` (the ESP's root), e.g. \\efi\\debian\\grubx64.efi");
    }
    if p.len() > 255 || !p.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it must be at most 255 printable ASCII characters, no spaces");
    }
    let parts: Vec<&str> = p.split('\\').skip(1).collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err("it has an empty, `.` or `..` component");
    }
    if !p.to_ascii_lowercase().ends_with(".efi") {
        return Err("it must name a `.efi` file");
    }
    Ok(p)
}

impl InstallSpec {
    /// A view for API responses and logs: header values and user data replaced by their size.
    pub fn redacted(&self) -> serde_json::Value {
        serde_json::json!({
            "template": self.template,
            "partitionScheme": self.partition_scheme,
            "hostname": self.hostname,
            "imageURL": redact_url(&self.image_url),
            "imageType": self.image_type,
            "checksum": self.checksum,
            "httpHeaders": self.http_headers.iter().map(|h| serde_json::json!({
                "name": h.name, "value": format!("<redacted {} bytes>", h.value.len())
            })).collect::<Vec<_>>(),
            "userData": self.user_data.as_ref().map(|u| format!("<redacted {} bytes, {}>", u.value.len(), u.encoding)),
            "metadata": self.metadata.as_ref().map(|m| m.keys().cloned().collect::<Vec<_>>()),
            "sshKey": self.ssh_key,
            "diskGroupId": self.disk_group_id,
            "hookTimeout": self.hook_timeout_seconds.map(crate::duration::format_duration),
            "storage": self.storage,
            "efiBootloaderPath": self.efi_bootloader_path,
        })
    }
}

/// An image URL for display: any `user:password@` replaced, and the values of the query
/// parameters that carry a presigned URL's secret (S3's `X-Amz-Signature`, `X-Amz-Credential`,
/// `X-Amz-Security-Token`, Google's `X-Goog-…`, Azure's `sig`, and any `signature`, `token`,
/// `key`, `secret`, `password`).
pub fn redact_url(url: &str) -> String {
    let (url, fragment) = match url.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (url, None),
    };
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            out = format!("{scheme}://<redacted>@{}", &rest[at + 1..]);
        }
    }
    if let Some((base, query)) = out.clone().split_once('?') {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, v)) if !v.is_empty() && secret_param(k) => format!("{k}=<redacted>"),
                _ => p.to_string(),
            })
            .collect();
        out = format!("{base}?{}", params.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Whether a query parameter's value is a credential (see [`redact_url`]).
fn secret_param(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    matches!(
        k.as_str(),
        "sig" | "key" | "secret" | "password" | "passwd" | "auth"
    ) || k.starts_with("x-amz-credential")
        || k.starts_with("x-goog-credential")
        || k.contains("signature")
        || k.contains("token")
}

/// `httpHeaders12Key` → (12, true); `httpHeaders0Value` → (0, false).
fn header_key(key: &str) -> Option<(u32, bool)> {
    let rest = key.strip_prefix("httpHeaders")?;
    let (num, is_key) = if let Some(n) = rest.strip_suffix("Key") {
        (n, true)
    } else if let Some(n) = rest.strip_suffix("Value") {
        (n, false)
    } else {
        return None;
    };
    if num.is_empty() || num.len() > 4 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((num.parse().ok()?, is_key))
}

fn unknown_key_hint(key: &str) -> String {
    let lower = key.to_ascii_lowercase();
    let near = KNOWN_KEYS
        .iter()
        .find(|k| k.to_ascii_lowercase() == lower && !k.contains('{'));
    match near {
        Some(k) => format!(": did you mean `{k}`? (keys are case-sensitive)"),
        None => format!(" (known keys: {})", KNOWN_KEYS.join(", ")),
    }
}

fn validate_checksum(sum: &str, kind: &str) -> Result<Checksum, SpecError> {
    let kind =
        ChecksumType::parse(kind).ok_or_else(|| SpecError::UnknownChecksumType(clip(kind)))?;
    let sum = sum.trim();
    if sum.len() != kind.hex_len() || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
        let got = if sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            format!("{}", sum.len())
        } else {
            format!("{} characters, not all hexadecimal", sum.chars().count())
        };
        return Err(SpecError::BadChecksumValue {
            kind: kind.as_str().into(),
            want: kind.hex_len(),
            got,
        });
    }
    Ok(Checksum {
        kind,
        hex: sum.to_ascii_lowercase(),
    })
}

fn validate_url(u: &str) -> Result<String, SpecError> {
    let bad = |why: &str| SpecError::BadImageUrl {
        url: clip(&redact_url(u)),
        why: why.into(),
    };
    let u = u.trim();
    let rest = if let Some(r) = u.strip_prefix("http://") {
        r
    } else if let Some(r) = u.strip_prefix("https://") {
        r
    } else {
        return Err(bad("only http:// and https:// URLs are supported"));
    };
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "it contains spaces or control characters (percent-encode them)",
        ));
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("it has no host"));
    }
    if u.len() > 4096 {
        return Err(bad("it is longer than 4096 characters"));
    }
    Ok(u.to_string())
}

fn validate_hostname(h: &str) -> Result<String, SpecError> {
    let ok = h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(h.to_string())
    } else {
        Err(SpecError::BadHostname(clip(h)))
    }
}

/// cloud-init's own formats start with one of these (plain or after base64 decoding).
fn looks_like_user_data(b: &[u8]) -> bool {
    const PREFIXES: &[&[u8]] = &[
        b"#cloud-config",
        b"#!",
        b"#include",
        b"#cloud-boothook",
        b"#part-handler",
        b"## template: jinja",
        b"Content-Type:",
        b"\x1f\x8b", // gzip-compressed user data, which cloud-init decompresses
    ];
    PREFIXES.iter().any(|p| b.starts_with(p))
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .ok()
        .or_else(|| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(&compact)
                .ok()
        })
}

fn validate_user_data(v: &str) -> Result<UserData, SpecError> {
    if looks_like_user_data(v.as_bytes()) {
        return Ok(UserData {
            encoding: "plain".into(),
            value: Secret::new(v),
        });
    }
    match decode_base64(v) {
        Some(decoded) if looks_like_user_data(&decoded) => {
            Ok(UserData { encoding: "base64".into(), value: Secret::new(v) })
        }
        Some(_) => Err(SpecError::BadUserData(
            "it is base64, but what it decodes to does not start with `#cloud-config`, `#!` or another cloud-init header".into(),
        )),
        None => Err(SpecError::BadUserData(
            "it is not base64 and does not start with `#cloud-config` or `#!`".into(),
        )),
    }
}

fn validate_ssh_key(k: &str) -> Result<String, SpecError> {
    let k = k.trim();
    if k.contains(['\n', '\r']) {
        return Err(SpecError::BadSshKey(
            "give exactly one key, on one line".into(),
        ));
    }
    let mut parts = k.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let blob = parts.next().unwrap_or_default();
    let known_kind = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-");
    if !known_kind {
        return Err(SpecError::BadSshKey(format!(
            "unknown key type `{}`",
            clip(kind)
        )));
    }
    if blob.len() < 16 || decode_base64(blob).is_none() {
        return Err(SpecError::BadSshKey(
            "the key data after the type is not base64".into(),
        ));
    }
    Ok(k.to_string())
}

fn parse_disk_group(v: &str) -> Result<u32, SpecError> {
    match v.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(SpecError::BadDiskGroup(clip(v))),
    }
}

/// RFC 9110 token characters (header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Values echoed in errors are cut short so an error message stays one readable line.
fn clip(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > 80 {
        format!("{}…", one_line.chars().take(80).collect::<String>())
    } else {
        one_line
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn credentials_and_presigned_signatures_are_redacted() {
        assert_eq!(
            redact_url("https://user:pw@example.com/x.qcow2"),
            "https://<redacted>@example.com/x.qcow2"
        );
        assert_eq!(
            redact_url(
                "https://b.s3.amazonaws.com/d.qcow2?X-Amz-Algorithm=AWS4-HMAC-SHA256&\
                 X-Amz-Credential=AKIA%2F20261201&X-Amz-Date=20261201T000000Z&X-Amz-Expires=3600&\
                 X-Amz-Security-Token=IQo&X-Amz-SignedHeaders=host&X-Amz-Signature=ab12"
            ),
            "https://b.s3.amazonaws.com/d.qcow2?X-Amz-Algorithm=AWS4-HMAC-SHA256&\
             X-Amz-Credential=<redacted>&X-Amz-Date=20261201T000000Z&X-Amz-Expires=3600&\
             X-Amz-Security-Token=<redacted>&X-Amz-SignedHeaders=host&X-Amz-Signature=<redacted>"
        );
        assert_eq!(
            redact_url("https://a.blob.core.windows.net/c/d.raw?sv=2022&se=2026&sig=Zm9v#top"),
            "https://a.blob.core.windows.net/c/d.raw?sv=2022&se=2026&sig=<redacted>#top"
        );
        assert_eq!(
            redact_url("http://h/x?token=s3cr3t&name=a"),
            "http://h/x?token=<redacted>&name=a"
        );
        // an @ in the query is not a userinfo
        assert_eq!(redact_url("http://h/x?mail=a@b"), "http://h/x?mail=a@b");
        assert_eq!(redact_url("http://h/x.qcow2"), "http://h/x.qcow2");
    }
}
