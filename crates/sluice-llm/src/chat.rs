//! Chat messages to a prompt: the model's own Jinja chat template from the GGUF metadata
//! (`tokenizer.chat_template`, rendered with minijinja as Hugging Face does), else ChatML.

pub use sluice_types::generation::Message;

pub struct ChatTemplate {
    env: Option<minijinja::Environment<'static>>,
    bos: String,
    eos: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// The template of a model (`None`: ChatML). A template that does not compile falls back to
    /// ChatML with a warning rather than making the model unusable.
    pub fn new(template: Option<&str>, bos: &str, eos: &str) -> ChatTemplate {
        let env = template.and_then(|t| {
            let mut env = minijinja::Environment::new();
            env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            });
            match env.add_template_owned(NAME, t.to_string()) {
                Ok(()) => Some(env),
                Err(e) => {
                    tracing::warn!(error = %e, "chat template does not compile: using ChatML");
                    None
                }
            }
        });
        ChatTemplate { env, bos: bos.into(), eos: eos.into() }
    }

    pub fn is_chatml(&self) -> bool {
        self.env.is_none()
    }

    /// The prompt for `messages`, ending where the assistant's answer starts.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        if messages.is_empty() {
            return Err("messages must hold at least one message".into());
        }
        match &self.env {
            Some(env) => env
                .get_template(NAME)
                .and_then(|t| {
                    t.render(minijinja::context! {
                        messages => messages,
                        add_generation_prompt => true,
                        bos_token => self.bos,
                        eos_token => self.eos,
                    })
                })
                .map_err(|e| format!("the model's chat template failed on these messages: {e}")),
            None => {
                let mut s = String::new();
                for m in messages {
                    s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                s.push_str("<|im_start|>assistant\n");
                Ok(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message> {
        vec![Message { role: "user".into(), content: "Hi".into() }]
    }

    #[test]
    fn chatml_without_a_template() {
        let t = ChatTemplate::new(None, "", "");
        assert_eq!(t.render(&msgs()).unwrap(), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn a_jinja_template_is_rendered() {
        let src = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
        let t = ChatTemplate::new(Some(src), "<s>", "</s>");
        assert_eq!(t.render(&msgs()).unwrap(), "<s>[user]Hi[assistant]");
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let src = "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}";
        let t = ChatTemplate::new(Some(src), "", "");
        assert!(t.render(&msgs()).unwrap_err().contains("system first"));
    }

    #[test]
    fn no_messages_is_an_error() {
        assert!(ChatTemplate::new(None, "", "").render(&[]).is_err());
    }
}
