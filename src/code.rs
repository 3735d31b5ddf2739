//! The Polaris response codes this server answers with. A leaf: it imports nothing of the
//! server, and each layer's error says which of these it is answered with.

use std::fmt;

/// Defines [`Code`] from one list: each variant's number is written once, and its metric
/// label is that number as text.
macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $number:literal,)*) => {
        /// The Polaris v1 response codes this server answers with. SDKs cast the number to
        /// their own enum, so only values of that enum appear here.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Code {
            $($(#[$doc])* $name = $number,)*
        }

        impl Code {
            /// Every code, in the order of the list.
            pub const ALL: &[Code] = &[$(Code::$name,)*];

            /// The number as text, for metric labels, without allocating.
            pub fn label(self) -> &'static str {
                match self {
                    $(Code::$name => stringify!($number),)*
                }
            }
        }
    };
}

codes! {
    ExecuteSuccess = 200000,
    /// Discover: the client's revision is current; nothing to send.
    DataNoChange = 200001,
    /// An HTTP request body over the configured limit.
    BadRequest = 400000,
    /// A request that does not decode.
    ParseException = 400001,
    EmptyRequest = 400002,
    /// Discover of a type this server does not serve.
    InvalidDiscoverResource = 400004,
    InvalidParameter = 400103,
    /// A read of the HTTP port without a parameter it needs.
    EmptyQueryParameter = 400104,
    InvalidNamespaceName = 400110,
    InvalidServiceName = 400120,
    InvalidInstanceId = 400130,
    InvalidInstanceHost = 400131,
    InvalidInstancePort = 400132,
    InvalidInstanceProtocol = 400136,
    InvalidInstanceVersion = 400137,
    InvalidInstanceLogicSet = 400138,
    /// Heartbeats are switched off on this server.
    HealthCheckNotOpen = 400140,
    InvalidMetadata = 400150,
    /// An unchanged re-registration.
    ExistedResource = 400201,
    /// Discover of a service that does not exist.
    NotFoundResource = 400202,
    NotFoundService = 400301,
    NotAllowedAccess = 401001,
    EmptyAutToken = 401002,
    /// The queue is full: refused at once, nothing enqueued.
    InstanceTooManyRequests = 429001,
    ExecuteException = 500000,
    StoreLayerException = 500001,
}

impl Code {
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_numbers() {
        for code in Code::ALL {
            assert_eq!(code.label(), code.as_u32().to_string());
        }
        assert_eq!(Code::ExistedResource.label(), "400201");
    }
}
