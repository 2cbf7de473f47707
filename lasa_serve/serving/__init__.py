"""Request handling behind the routes: steering settings, chat and text prompts, the
generation loop's responses and moderation."""
