//! Polaris response codes, and the one function that maps a request's error to one.

use std::fmt;

use crate::auth::AuthError;
use crate::batch::BatchError;
use crate::naming::ValidationError;

/// The Polaris v1 response codes this server answers with. SDKs cast the number to their
/// own enum, so only values of that enum appear here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Code {
    ExecuteSuccess = 200000,
    BadRequest = 400000,
    ParseException = 400001,
    EmptyRequest = 400002,
    InvalidParameter = 400103,
    InvalidNamespaceName = 400110,
    InvalidServiceName = 400120,
    InvalidServiceToken = 400122,
    InvalidInstanceId = 400130,
    InvalidInstanceHost = 400131,
    InvalidInstancePort = 400132,
    InvalidInstanceProtocol = 400136,
    InvalidInstanceVersion = 400137,
    InvalidInstanceLogicSet = 400138,
    HealthCheckNotOpen = 400140,
    HeartbeatOnDisabledIns = 400141,
    InvalidMetadata = 400150,
    ExistedResource = 400201,
    NotFoundResource = 400202,
    NotFoundService = 400301,
    NotFoundInstance = 400303,
    Unauthorized = 401000,
    NotAllowedAccess = 401001,
    EmptyAutToken = 401002,
    InstanceTooManyRequests = 429001,
    ExecuteException = 500000,
    StoreLayerException = 500001,
    HeartbeatException = 500007,
    InstanceRegisTimeout = 500008,
}

impl Code {
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The number as text, for metric labels, without allocating.
    pub fn label(self) -> &'static str {
        match self {
            Code::ExecuteSuccess => "200000",
            Code::BadRequest => "400000",
            Code::ParseException => "400001",
            Code::EmptyRequest => "400002",
            Code::InvalidParameter => "400103",
            Code::InvalidNamespaceName => "400110",
            Code::InvalidServiceName => "400120",
            Code::InvalidServiceToken => "400122",
            Code::InvalidInstanceId => "400130",
            Code::InvalidInstanceHost => "400131",
            Code::InvalidInstancePort => "400132",
            Code::InvalidInstanceProtocol => "400136",
            Code::InvalidInstanceVersion => "400137",
            Code::InvalidInstanceLogicSet => "400138",
            Code::HealthCheckNotOpen => "400140",
            Code::HeartbeatOnDisabledIns => "400141",
            Code::InvalidMetadata => "400150",
            Code::ExistedResource => "400201",
            Code::NotFoundResource => "400202",
            Code::NotFoundService => "400301",
            Code::NotFoundInstance => "400303",
            Code::Unauthorized => "401000",
            Code::NotAllowedAccess => "401001",
            Code::EmptyAutToken => "401002",
            Code::InstanceTooManyRequests => "429001",
            Code::ExecuteException => "500000",
            Code::StoreLayerException => "500001",
            Code::HeartbeatException => "500007",
            Code::InstanceRegisTimeout => "500008",
        }
    }

    /// Whether an SDK treats this answer as a registration that holds.
    pub fn is_success(self) -> bool {
        matches!(self, Code::ExecuteSuccess | Code::ExistedResource)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u32())
    }
}

/// Everything that can stop a request from being carried out, across the layers.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("service {service} in namespace {namespace} does not exist")]
    ServiceNotFound { namespace: String, service: String },
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// Maps an error to the Polaris code the client receives. No other place knows the numbers.
pub fn code_of(err: &RequestError) -> Code {
    match err {
        RequestError::Auth(AuthError::MissingToken) => Code::EmptyAutToken,
        RequestError::Auth(AuthError::NotAllowed { .. }) => Code::NotAllowedAccess,
        RequestError::Invalid(invalid) => match invalid {
            ValidationError::Empty => Code::EmptyRequest,
            ValidationError::Namespace(_) => Code::InvalidNamespaceName,
            ValidationError::Service(_) => Code::InvalidServiceName,
            ValidationError::Id(_) => Code::InvalidInstanceId,
            ValidationError::Host(_) => Code::InvalidInstanceHost,
            ValidationError::Port(_) => Code::InvalidInstancePort,
            ValidationError::Protocol(_) => Code::InvalidInstanceProtocol,
            ValidationError::Version(_) => Code::InvalidInstanceVersion,
            ValidationError::LogicSet(_) => Code::InvalidInstanceLogicSet,
            ValidationError::Metadata(_) => Code::InvalidMetadata,
            ValidationError::Parameter(_) => Code::InvalidParameter,
        },
        RequestError::ServiceNotFound { .. } => Code::NotFoundService,
        RequestError::Batch(batch) => match batch {
            BatchError::QueueFull => Code::InstanceTooManyRequests,
            BatchError::Store(_) => Code::StoreLayerException,
            BatchError::ShuttingDown | BatchError::Abandoned => Code::ExecuteException,
        },
    }
}
