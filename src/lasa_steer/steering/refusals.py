"""Refusal sentences per language, for the ``prefix`` and ``refuse`` actions.

Why a table: when the gate fires, the assistant turn opens with a short, polite refusal in
the prompt's language (the inference-time form of the LASA paper's safety prefix). A model
continues fluently from text in the language it was asked in; an English opener after a
Swahili prompt invites a switch of language or a muddle. Each sentence says the same thing
("Sorry, but I can't help with that request."), in a neutral register, and each was checked
against the refusal judge (``tests``: every sentence is judged a refusal in its language).

Languages: every language of the bundled data (PolyRefuse, MultiJail, MGSM, XSafety) plus a
few large ones. Others get English.
"""

from __future__ import annotations

REFUSAL_SENTENCES: dict[str, str] = {
    "en": "I'm sorry, but I can't help with that request.",
    "ar": "عذرًا، لا يمكنني المساعدة في هذا الطلب.",
    "bn": "দুঃখিত, আমি এই অনুরোধে সাহায্য করতে পারব না।",
    "de": "Es tut mir leid, aber bei dieser Anfrage kann ich nicht helfen.",
    "es": "Lo siento, pero no puedo ayudar con esa solicitud.",
    "fr": "Je suis désolé, mais je ne peux pas vous aider pour cette demande.",
    "hi": "क्षमा करें, मैं इस अनुरोध में आपकी मदद नहीं कर सकता।",
    "id": "Maaf, saya tidak dapat membantu permintaan ini.",
    "it": "Mi dispiace, ma non posso aiutarti con questa richiesta.",
    "ja": "申し訳ありませんが、このご依頼にはお応えできません。",
    "jv": "Nyuwun pangapunten, kula mboten saged mbiyantu panyuwunan punika.",
    "ko": "죄송하지만 이 요청은 도와드릴 수 없습니다.",
    "nl": "Het spijt me, maar ik kan je niet helpen met dit verzoek.",
    "pl": "Przepraszam, ale nie mogę pomóc w tej sprawie.",
    "pt": "Desculpe, mas não posso ajudar com esse pedido.",
    "ru": "Извините, но я не могу помочь с этим запросом.",
    "sw": "Samahani, siwezi kukusaidia kwa ombi hili.",
    "te": "క్షమించండి, ఈ అభ్యర్థనలో నేను సహాయం చేయలేను.",
    "th": "ขออภัย ฉันไม่สามารถช่วยเหลือเกี่ยวกับคำขอนี้ได้",
    "tr": "Üzgünüm, ancak bu isteğe yardımcı olamam.",
    "vi": "Xin lỗi, nhưng tôi không thể hỗ trợ yêu cầu này.",
    "yo": "Ẹ má bínú, mi ò lè ràn yín lọ́wọ́ lórí ìbéèrè yìí.",
    "zh": "抱歉，我无法协助处理这个请求。",
}


_ALIASES = {"sp": "es"}  # XSafety writes Spanish as "sp"


def refusal_sentence(lang: str | None) -> str:
    """The refusal sentence for ``lang`` (ISO 639-1); English for unknown languages."""
    code = (lang or "en").lower()
    return REFUSAL_SENTENCES.get(_ALIASES.get(code, code), REFUSAL_SENTENCES["en"])
