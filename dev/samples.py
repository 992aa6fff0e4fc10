"""Sample texts for the demo and the benchmarks."""

from __future__ import annotations

TICKETS = [
    "I was charged twice for my subscription this month, please refund one payment.",
    "The export button crashes the app every time I try to download my report.",
    "How do I add a second administrator to our account?",
    "Could you add dark mode? My team works late and the screen is too bright.",
    "I cannot log in since yesterday; the password reset mail never arrives.",
    "Your latest update deleted all my saved filters. This is unacceptable.",
    "Thanks for the quick fix last week, everything works great now!",
    "Our invoice shows the wrong VAT number, we need a corrected copy.",
]
"""Support tickets, as `support_triage` reads them."""

CAPTIONS = ["New in the catalog", "Spring collection", "Bestseller restock", "Studio shot"]
"""Texts sent along with product photos to `product_images`."""
