//! [`Routes`]: the API's routes together with their documentation. Every
//! module that serves routes builds one; [`crate::routes`] puts them
//! together and splits them into the axum router and the OpenAPI document.

use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::AppState;

/// Routes that carry their own description. The only way in is
/// [`Routes::routes`], which takes what `utoipa_axum::routes!` makes of
/// handlers annotated with `#[utoipa::path]`: the route axum serves and its
/// operation in the document come from the same annotation, so a route
/// cannot be served undocumented, nor documented at another path.
#[derive(Default)]
pub struct Routes(OpenApiRouter<AppState>);

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the handlers of one `routes!(...)`: one path, one or more methods.
    pub fn routes(self, handlers: UtoipaMethodRouter<AppState>) -> Self {
        Self(self.0.routes(handlers))
    }

    /// Adds a schema that no operation names but a client needs, such as
    /// the data of a server-sent event.
    pub fn schema<T: ToSchema>(mut self) -> Self {
        let mut schemas = Vec::new();
        T::schemas(&mut schemas);
        schemas.push((T::name().into_owned(), T::schema()));
        let components = self
            .0
            .get_openapi_mut()
            .components
            .get_or_insert_with(Default::default);
        components.schemas.extend(schemas);
        self
    }

    pub fn merge(self, other: Routes) -> Self {
        Self(self.0.merge(other.0))
    }

    pub(crate) fn into_inner(self) -> OpenApiRouter<AppState> {
        self.0
    }
}
