"""Publishing GViT runs to the Hugging Face Hub: export folders, model cards, uploads (the
``gvit-publish`` command is :mod:`timm_gvit.hub.publish`)."""

from .export import PushError, export_model, model_card_values, push_folder, render_model_card

__all__ = ["PushError", "export_model", "model_card_values", "push_folder", "render_model_card"]
