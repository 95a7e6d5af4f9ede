//! The typed values of request paths and parameters that many modules share.

/// The resource type of an Upload API path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    Image,
    Video,
    Raw,
    /// Decided from the file (uploads); `image` for the other methods.
    Auto,
    /// Every resource type (`generate_archive` only, as `download_folder` sends it).
    All,
}

impl ResourceType {
    pub fn parse(s: &str) -> Option<ResourceType> {
        Some(match s {
            "image" => ResourceType::Image,
            "video" => ResourceType::Video,
            "raw" => ResourceType::Raw,
            "auto" => ResourceType::Auto,
            "all" => ResourceType::All,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Image => "image",
            ResourceType::Video => "video",
            ResourceType::Raw => "raw",
            ResourceType::Auto => "auto",
            ResourceType::All => "all",
        }
    }

    /// The resource type of stored assets a method addresses (`auto` means `image`).
    pub fn stored(self) -> &'static str {
        match self {
            ResourceType::Auto | ResourceType::All => "image",
            other => other.as_str(),
        }
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
