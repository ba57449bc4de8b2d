//! What each integration type means by default: its endpoint and how its health is checked.

use bizosaas_crds::integration::IntegrationType;

/// How an endpoint's health is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// An HTTP GET of a path below the endpoint; any answer below 500 counts as reachable.
    Http { path: &'static str },
    /// A TCP connection that must greet with `220`, as SMTP servers do.
    SmtpGreeting,
}

/// Default endpoint (`None`: the user must give one) and probe of a type.
pub fn defaults(type_: IntegrationType) -> (Option<&'static str>, Probe) {
    use IntegrationType::*;
    let http = |path| Probe::Http { path };
    match type_ {
        OpenRouter => (Some("https://openrouter.ai/api/v1"), http("/models")),
        OpenAI => (Some("https://api.openai.com/v1"), http("/models")),
        Anthropic => (Some("https://api.anthropic.com/v1"), http("/models")),
        Stripe => (Some("https://api.stripe.com/v1"), http("/balance")),
        SendGrid => (Some("https://api.sendgrid.com/v3"), http("/scopes")),
        SMTP => (Some("smtp://smtp.sendgrid.net:587"), Probe::SmtpGreeting),
        Twilio => (Some("https://api.twilio.com/2010-04-01"), http("/Accounts.json")),
        S3 => (Some("https://s3.amazonaws.com"), http("/")),
        Lago => (Some("https://api.getlago.com/api/v1"), http("/organizations")),
        Wagtail => (Some("http://wagtail.bizosaas-system.svc.cluster.local/api/v2"), http("/pages/")),
        Postiz => (Some("https://api.postiz.com/public/v1"), http("/integrations")),
        Slack => (Some("https://slack.com/api"), http("/api.test")),
        Webhook => (None, http("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_webhooks_lack_a_default_endpoint() {
        use IntegrationType::*;
        for t in [OpenRouter, OpenAI, Anthropic, Stripe, SendGrid, SMTP, Twilio, S3, Lago, Wagtail, Postiz, Slack] {
            assert!(defaults(t).0.is_some(), "{t:?}");
        }
        assert_eq!(defaults(Webhook).0, None);
        assert_eq!(defaults(SMTP).1, Probe::SmtpGreeting);
        assert!(defaults(SMTP).0.unwrap().starts_with("smtp://"));
    }
}
