//! error: every client error of an install request. The texts of the OVH BYOLinux guide are
//! kept word for word (with the real values filled in); byol's own checks say what was wrong
//! and what to do.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SpecError {
    // --- OVH guide wording, exact ---
    #[error("Please provide checkSum AND checkSumType or none of them")]
    ChecksumPairing,
    #[error("image provided format is `{found}` which does not match expected {expected} format")]
    FormatMismatch { found: String, expected: String },
    #[error(
        "image provided has a size of `{image}` bytes which is larger than `{device}` of `{disk}` bytes"
    )]
    ImageTooLarge {
        image: u64,
        device: String,
        disk: u64,
    },
    #[error("Can't write qcow2 on disk")]
    CantWriteQcow2,
    #[error("Could not download, qcow2 image is too big to download in memory.")]
    TooBigForMemory,
    #[error("Could not download image located : `{url}`{}", cause_suffix(.cause))]
    Download { url: String, cause: String },
    #[error("Bad `{kind}` for downloaded file, got : `{got}` while expecting `{expected}`.")]
    BadChecksum {
        kind: String,
        got: String,
        expected: String,
    },

    // --- byol's own request checks ---
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error(
        "unknown templateName `{0}`: byol installs `byolinux_64` (the image's files in a storage layout) and `byoi_64` (the image written to one disk)"
    )]
    UnknownTemplate(String),
    #[error("invalid efiBootloaderPath `{0}`: {1}")]
    BadEfiPath(String, &'static str),
    #[error(
        "unknown partitionSchemeName `{0}`: use `default` or a scheme stored with `byol scheme add` (`byol scheme list` shows them)"
    )]
    UnknownPartitionScheme(String),
    /// A stored scheme's rows no longer pass the checks (OVH's message).
    #[error("{0}")]
    Storage(String),
    #[error("missing userMetadata `imageURL`: give the http(s) URL of your qcow2 or raw image")]
    MissingImageUrl,
    #[error("invalid imageURL `{url}`: {why}")]
    BadImageUrl { url: String, why: String },
    #[error("unknown imageType `{0}`: use `qcow2` or `raw`")]
    UnknownImageType(String),
    #[error("unknown imageCheckSumType `{0}`: use md5, sha1, sha256 or sha512")]
    UnknownChecksumType(String),
    #[error(
        "imageCheckSum is not a valid `{kind}` checksum: expected {want} hexadecimal characters, got {got}"
    )]
    BadChecksumValue {
        kind: String,
        want: usize,
        got: String,
    },
    #[error("httpHeaders{n}{have} has no matching httpHeaders{n}{missing}: give both or neither")]
    UnpairedHeader {
        n: String,
        have: &'static str,
        missing: &'static str,
    },
    #[error("httpHeaders{n}Key `{name}` is not a valid HTTP header name")]
    BadHeaderName { n: String, name: String },
    #[error(
        "httpHeaders{n}Value is not a valid HTTP header value (it holds a control character or line break)"
    )]
    BadHeaderValue { n: String },
    #[error(
        "configDriveUserData is neither base64 nor a `#cloud-config` or `#!` script text ({0}); send `base64 -w0 < my-data.yaml` or the plain text"
    )]
    BadUserData(String),
    #[error("configDriveMetadata must be a JSON object (e.g. {{\"role\":\"web\"}}): {0}")]
    BadMetadata(String),
    #[error("sshKey is not an OpenSSH public key line (`ssh-ed25519 AAAA… comment`): {0}")]
    BadSshKey(String),
    #[error("diskGroupId `{0}` is not a positive integer")]
    BadDiskGroup(String),
    #[error(
        "hookTimeout: {0} (how long make_image_bootable.sh may run, from 1m to 24h, e.g. `45m`)"
    )]
    BadHookTimeout(String),
    #[error(
        "customHostname `{0}` is not a valid hostname: letters, digits and '-', dot-separated labels of 1-63 characters, 253 at most"
    )]
    BadHostname(String),
    #[error("unknown userMetadata key `{key}`{hint}")]
    UnknownKey { key: String, hint: String },
    #[error("userMetadata key `{0}` is given more than once")]
    DuplicateKey(String),
}

fn cause_suffix(cause: &str) -> String {
    if cause.is_empty() {
        String::new()
    } else {
        format!(" ({cause})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guide_wording_is_exact() {
        assert_eq!(
            SpecError::ChecksumPairing.to_string(),
            "Please provide checkSum AND checkSumType or none of them"
        );
        assert_eq!(
            SpecError::FormatMismatch {
                found: "raw".into(),
                expected: "qcow2".into()
            }
            .to_string(),
            "image provided format is `raw` which does not match expected qcow2 format"
        );
        assert_eq!(
            SpecError::ImageTooLarge {
                image: 10,
                device: "/dev/sda".into(),
                disk: 5
            }
            .to_string(),
            "image provided has a size of `10` bytes which is larger than `/dev/sda` of `5` bytes"
        );
        assert_eq!(
            SpecError::CantWriteQcow2.to_string(),
            "Can't write qcow2 on disk"
        );
        assert_eq!(
            SpecError::TooBigForMemory.to_string(),
            "Could not download, qcow2 image is too big to download in memory."
        );
        assert_eq!(
            SpecError::Download {
                url: "http://x/i.qcow2".into(),
                cause: String::new()
            }
            .to_string(),
            "Could not download image located : `http://x/i.qcow2`"
        );
        assert_eq!(
            SpecError::Download {
                url: "http://x/i".into(),
                cause: "HTTP 404".into()
            }
            .to_string(),
            "Could not download image located : `http://x/i` (HTTP 404)"
        );
        assert_eq!(
            SpecError::BadChecksum {
                kind: "sha512".into(),
                got: "ab".into(),
                expected: "cd".into()
            }
            .to_string(),
            "Bad `sha512` for downloaded file, got : `ab` while expecting `cd`."
        );
    }
}
