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

/// The delivery type of an asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryType {
    Upload,
    Private,
    Authenticated,
    /// The images nephos makes itself (`text`, `sprite`, `multi`): never given by an upload.
    Text,
    Sprite,
    Multi,
}

impl DeliveryType {
    /// `generated`: whether the types of made images are allowed.
    pub fn parse(s: &str, generated: bool) -> Option<DeliveryType> {
        Some(match s {
            "upload" => DeliveryType::Upload,
            "private" => DeliveryType::Private,
            "authenticated" => DeliveryType::Authenticated,
            "text" if generated => DeliveryType::Text,
            "sprite" if generated => DeliveryType::Sprite,
            "multi" if generated => DeliveryType::Multi,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryType::Upload => "upload",
            DeliveryType::Private => "private",
            DeliveryType::Authenticated => "authenticated",
            DeliveryType::Text => "text",
            DeliveryType::Sprite => "sprite",
            DeliveryType::Multi => "multi",
        }
    }
}
