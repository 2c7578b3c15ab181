"""A synthetic, seeded product catalogue with the shape of WebShop's scraped Amazon data.

The real WebShop catalogue (1.18M products) is a multi-GB download; what an agent needs from it is
the structure: a category path, a product type, a free-text title, attributes that appear in the
title/features/description, option groups (size, color, flavor, ...) whose values must be clicked,
and a price. This module generates thousands of such products from small hand-written tables, so
that the same ``(num_products, seed)`` always gives the same catalogue on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: Option groups: key -> (group name shown on the item page, candidate values).
OPTION_POOLS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pack": ("size", ("pack of 1", "pack of 2", "pack of 3", "6 pack", "12 pack", "24 pack")),
    "weight": ("size", ("2 ounce", "4 ounce", "8 ounce", "12 ounce", "1 pound", "2 pound", "5 pound")),
    "snack_flavor": ("flavor name", ("sea salt", "barbecue", "sour cream and onion", "jalapeno", "salt and vinegar",
                                     "cheddar", "original", "honey mustard")),
    "sweet_flavor": ("flavor name", ("chocolate", "peanut butter", "vanilla", "cookies and cream", "strawberry",
                                     "caramel", "coconut", "almond")),
    "drink_flavor": ("flavor name", ("peppermint", "chamomile", "lemon", "peach", "mango", "lime", "mixed berry",
                                     "ginger")),
    "roast": ("flavor name", ("light roast", "medium roast", "dark roast", "espresso roast", "decaf")),
    "volume": ("size", ("1 fl oz", "1.7 fl oz", "3.4 fl oz", "8 fl oz", "12 fl oz", "16 fl oz", "33.8 fl oz")),
    "scent": ("scent", ("lavender", "unscented", "coconut", "rose", "citrus", "vanilla", "eucalyptus", "tea tree")),
    "lip_color": ("color", ("red", "nude", "pink", "berry", "coral", "mauve", "plum", "brown")),
    "shade": ("color", ("ivory", "light beige", "natural beige", "warm sand", "honey", "caramel", "deep tan",
                        "espresso")),
    "apparel_size": ("size", ("x-small", "small", "medium", "large", "x-large", "xx-large", "3x-large")),
    "shoe_size": ("size", ("6", "6.5", "7", "7.5", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12", "13")),
    "apparel_color": ("color", ("black", "white", "navy blue", "heather gray", "red", "olive green", "khaki",
                                "light blue", "burgundy", "pink")),
    "device_color": ("color", ("black", "white", "silver", "space gray", "blue", "rose gold", "red", "green")),
    "length": ("size", ("1 ft", "3 ft", "6 ft", "10 ft", "15 ft")),
    "count": ("style", ("1 pack", "2 pack", "3 pack", "5 pack")),
    "phone_model": ("style", ("iphone 13", "iphone 14", "iphone 15 pro", "galaxy s22", "galaxy s23", "pixel 7",
                              "pixel 8")),
    "bed_size": ("size", ("twin", "twin xl", "full", "queen", "king", "california king")),
    "home_color": ("color", ("white", "gray", "beige", "navy", "sage green", "terracotta", "charcoal", "ivory",
                             "blush pink")),
    "set": ("size", ("set of 2", "set of 4", "set of 6", "set of 8", "set of 12")),
    "frame_size": ("size", ("5x7 inch", "8x10 inch", "11x14 inch", "16x20 inch", "24x36 inch")),
    "candle_scent": ("scent", ("vanilla", "lavender", "sandalwood", "fresh linen", "pine", "cinnamon",
                               "ocean breeze")),
}

#: Attribute pools per top-level category (what WebShop goals ask for besides options).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "grocery": ("gluten free", "non gmo", "organic", "sugar free", "keto friendly", "low carb", "vegan",
                "dairy free", "high protein", "kosher", "low sodium", "low calorie", "caffeine free",
                "plant based", "nut free", "individually wrapped", "ready to eat", "natural ingredients"),
    "beauty": ("cruelty free", "paraben free", "fragrance free", "sulfate free", "vegan", "dermatologist tested",
               "long lasting", "natural ingredients", "hyaluronic acid", "sensitive skin", "oil free",
               "travel size", "easy to apply", "dry skin", "anti aging", "non toxic"),
    "fashion": ("machine wash", "long sleeve", "short sleeve", "slim fit", "relaxed fit", "button closure",
                "elastic waist", "moisture wicking", "quick drying", "non slip", "rubber sole", "lace up",
                "hand wash", "cotton spandex", "daily wear", "soft material"),
    "electronics": ("fast charging", "noise cancelling", "high definition", "easy to use", "water resistant",
                    "long battery life", "plug and play", "usb port", "aluminum alloy", "easy install",
                    "high speed", "dual band", "wireless bluetooth", "heavy duty", "compact size", "led light"),
    "home": ("easy clean", "dishwasher safe", "bpa free", "machine washable", "non slip", "eco friendly",
             "living room", "bedroom", "stainless steel", "high density", "space saving", "long lasting",
             "easy assemble", "super soft", "heat resistant", "ready to hang"),
}

#: Product types: (category, subcategory, type, option pool keys, (min price, max price)).
PRODUCT_TYPES: tuple[tuple[str, str, str, tuple[str, ...], tuple[float, float]], ...] = (
    ("grocery", "snacks", "potato chips", ("pack", "snack_flavor"), (3, 35)),
    ("grocery", "snacks", "protein bars", ("pack", "sweet_flavor"), (8, 45)),
    ("grocery", "snacks", "trail mix", ("weight", "pack"), (5, 30)),
    ("grocery", "snacks", "beef jerky", ("weight", "snack_flavor"), (6, 40)),
    ("grocery", "snacks", "popcorn", ("pack", "snack_flavor"), (3, 25)),
    ("grocery", "beverages", "green tea", ("pack", "drink_flavor"), (4, 30)),
    ("grocery", "beverages", "coffee beans", ("weight", "roast"), (8, 45)),
    ("grocery", "beverages", "sparkling water", ("pack", "drink_flavor"), (5, 30)),
    ("grocery", "beverages", "herbal tea", ("pack", "drink_flavor"), (4, 25)),
    ("grocery", "pantry", "olive oil", ("volume",), (6, 40)),
    ("grocery", "pantry", "almond butter", ("weight", "pack"), (6, 30)),
    ("grocery", "pantry", "granola", ("weight", "sweet_flavor"), (4, 25)),
    ("grocery", "pantry", "honey", ("weight", "pack"), (5, 35)),
    ("grocery", "pantry", "pasta sauce", ("pack", "weight"), (3, 25)),
    ("beauty", "skin care", "face moisturizer", ("volume", "scent"), (8, 60)),
    ("beauty", "skin care", "eye cream", ("volume",), (10, 70)),
    ("beauty", "skin care", "face serum", ("volume", "scent"), (10, 80)),
    ("beauty", "skin care", "sunscreen", ("volume", "count"), (7, 40)),
    ("beauty", "skin care", "body lotion", ("volume", "scent"), (5, 35)),
    ("beauty", "hair care", "shampoo", ("volume", "scent"), (5, 40)),
    ("beauty", "hair care", "conditioner", ("volume", "scent"), (5, 40)),
    ("beauty", "hair care", "hair oil", ("volume", "scent"), (6, 45)),
    ("beauty", "makeup", "lipstick", ("lip_color", "count"), (5, 35)),
    ("beauty", "makeup", "foundation", ("shade", "volume"), (8, 50)),
    ("beauty", "makeup", "mascara", ("count",), (5, 30)),
    ("beauty", "makeup", "nail polish", ("lip_color", "count"), (4, 25)),
    ("fashion", "men clothing", "t-shirt", ("apparel_size", "apparel_color"), (8, 40)),
    ("fashion", "men clothing", "hoodie", ("apparel_size", "apparel_color"), (18, 70)),
    ("fashion", "men clothing", "jeans", ("apparel_size", "apparel_color"), (20, 80)),
    ("fashion", "men clothing", "dress shirt", ("apparel_size", "apparel_color"), (15, 60)),
    ("fashion", "women clothing", "maxi dress", ("apparel_size", "apparel_color"), (18, 80)),
    ("fashion", "women clothing", "blouse", ("apparel_size", "apparel_color"), (12, 50)),
    ("fashion", "women clothing", "leggings", ("apparel_size", "apparel_color"), (10, 45)),
    ("fashion", "women clothing", "cardigan", ("apparel_size", "apparel_color"), (18, 70)),
    ("fashion", "shoes", "running shoes", ("shoe_size", "apparel_color"), (30, 150)),
    ("fashion", "shoes", "sneakers", ("shoe_size", "apparel_color"), (25, 120)),
    ("fashion", "shoes", "boots", ("shoe_size", "apparel_color"), (35, 180)),
    ("fashion", "shoes", "sandals", ("shoe_size", "apparel_color"), (12, 60)),
    ("electronics", "audio", "wireless earbuds", ("device_color",), (15, 150)),
    ("electronics", "audio", "bluetooth speaker", ("device_color",), (15, 120)),
    ("electronics", "audio", "headphones", ("device_color",), (20, 200)),
    ("electronics", "audio", "soundbar", ("device_color",), (50, 300)),
    ("electronics", "accessories", "usb c cable", ("length", "count"), (5, 25)),
    ("electronics", "accessories", "phone case", ("phone_model", "device_color"), (6, 35)),
    ("electronics", "accessories", "wireless charger", ("device_color", "count"), (10, 50)),
    ("electronics", "accessories", "power bank", ("device_color",), (15, 70)),
    ("electronics", "accessories", "screen protector", ("phone_model", "count"), (5, 20)),
    ("electronics", "computer", "wireless mouse", ("device_color",), (8, 60)),
    ("electronics", "computer", "mechanical keyboard", ("device_color",), (25, 150)),
    ("electronics", "computer", "webcam", ("device_color",), (20, 120)),
    ("electronics", "computer", "hdmi cable", ("length", "count"), (5, 30)),
    ("home", "kitchen", "coffee mug", ("set", "home_color"), (8, 40)),
    ("home", "kitchen", "cutting board", ("set",), (10, 50)),
    ("home", "kitchen", "knife set", ("home_color",), (20, 150)),
    ("home", "kitchen", "food storage containers", ("set", "home_color"), (12, 45)),
    ("home", "bedding", "bed sheets", ("bed_size", "home_color"), (20, 120)),
    ("home", "bedding", "pillow", ("bed_size", "set"), (15, 80)),
    ("home", "bedding", "comforter", ("bed_size", "home_color"), (30, 180)),
    ("home", "bedding", "throw blanket", ("home_color",), (15, 70)),
    ("home", "decor", "throw pillow covers", ("set", "home_color"), (8, 40)),
    ("home", "decor", "wall art", ("frame_size",), (15, 120)),
    ("home", "decor", "scented candle", ("candle_scent", "set"), (8, 40)),
    ("home", "decor", "picture frame", ("frame_size", "home_color"), (8, 50)),
    ("home", "bath", "bath towels", ("set", "home_color"), (15, 70)),
    ("home", "bath", "shower curtain", ("home_color",), (10, 45)),
    ("home", "bath", "bath mat", ("home_color",), (8, 40)),
)

_BRAND_HEADS = ("sun", "blue", "oak", "north", "pure", "nova", "zen", "peak", "river", "maple", "silver", "bright",
                "urban", "wild", "cedar", "aqua", "terra", "luna", "velo", "prime")
_BRAND_TAILS = ("vale", "leaf", "crest", "field", "stone", "wave", "ridge", "works", "bay", "line", "nest", "path",
                "craft", "wood", "port", "glow")
_TITLE_TAILS = ("premium quality", "everyday essential", "gift idea", "value size", "new version", "classic edition",
                "best seller", "family size", "limited edition", "original formula")
_FILLER: dict[str, tuple[str, ...]] = {
    "grocery": ("Made in small batches for fresh taste.", "Great for lunch boxes, parties and road trips.",
                "Store in a cool, dry place.", "A pantry staple loved by the whole family."),
    "beauty": ("Suitable for daily use.", "Apply to clean skin or hair as needed.",
               "Formulated with care and tested for quality.", "Leaves a light, pleasant finish."),
    "fashion": ("Designed for comfort all day long.", "Pairs well with casual and smart outfits.",
                "Please check the size chart before ordering.", "Durable stitching for long wear."),
    "electronics": ("Compatible with most devices.", "Backed by a one year warranty.",
                    "Simple setup in minutes.", "Built to handle everyday use."),
    "home": ("Adds a cozy touch to any room.", "Makes a thoughtful housewarming gift.",
             "Designed to fit modern homes.", "Built from durable materials."),
}

_ASIN_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


@dataclass(frozen=True)
class Product:
    """One catalogue entry. ``options`` maps a group name to its clickable values (page order)."""

    asin: str
    title: str
    category: str
    subcategory: str
    product_type: str
    attributes: tuple[str, ...]
    options: dict[str, tuple[str, ...]]
    price: float
    rating: float
    description: str
    features: tuple[str, ...]
    brand: str = ""

    @property
    def category_path(self) -> str:
        """WebShop-style breadcrumb, e.g. ``grocery › snacks › potato chips``."""
        return f"{self.category} › {self.subcategory} › {self.product_type}"

    @property
    def option_values(self) -> tuple[str, ...]:
        """Every option value of the product, group by group."""
        return tuple(v for values in self.options.values() for v in values)

    def search_text(self) -> str:
        """What the search engine indexes (title, breadcrumb, features, description; not options)."""
        return " ".join((self.title, self.category_path, *self.features, self.description))


@dataclass
class Catalogue:
    """The products of one seed, with an id lookup."""

    products: list[Product]
    seed: int
    by_asin: dict[str, Product] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_asin = {p.asin: p for p in self.products}

    def __len__(self) -> int:
        return len(self.products)


def _asin(rng: random.Random, taken: set[str]) -> str:
    while True:
        asin = "B0" + "".join(rng.choice(_ASIN_CHARS) for _ in range(8))
        if asin not in taken:
            taken.add(asin)
            return asin


def _title_case(text: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))


def _make_product(rng: random.Random, kind: tuple, asin: str) -> Product:
    category, subcategory, product_type, option_keys, (low, high) = kind
    brand = _title_case(rng.choice(_BRAND_HEADS) + rng.choice(_BRAND_TAILS))
    attributes = tuple(rng.sample(ATTRIBUTES[category], rng.randint(2, 5)))
    options: dict[str, tuple[str, ...]] = {}
    seen_values: set[str] = set()
    for key in option_keys:
        group, pool = OPTION_POOLS[key]
        if group in options:  # two pools of the same group name on one product: keep the first
            continue
        picked = set(rng.sample(pool, rng.randint(2, min(6, len(pool)))))
        chosen = [v for v in pool if v in picked and v not in seen_values]  # page order = pool order
        if len(chosen) >= 2:
            options[group] = tuple(chosen)
            seen_values.update(chosen)
    price = round(rng.uniform(low, high), 0) - rng.choice((0.01, 0.05, 0.51))
    price = round(max(price, 0.99), 2)
    in_title = list(attributes[: rng.randint(0, 2)])
    title = _title_case(" ".join([brand, *in_title, product_type]))
    title = f"{title}, {_title_case(rng.choice(_TITLE_TAILS))}"
    features = tuple(f"{_title_case(a)}: {rng.choice(_FILLER[category])}" for a in attributes)
    filler = rng.sample(_FILLER[category], 2)
    description = f"The {brand} {product_type} in our {subcategory} range. {filler[0]} {filler[1]}"
    rating = round(rng.uniform(3.0, 5.0), 1)
    return Product(asin, title, category, subcategory, product_type, attributes, options, price, rating,
                   description, features, brand)


def generate_catalogue(num_products: int = 3000, seed: int = 0) -> Catalogue:
    """``num_products`` products spread round-robin over the product types (shuffled), reproducibly."""
    if num_products < len(PRODUCT_TYPES):
        raise ValueError(f"num_products must be at least {len(PRODUCT_TYPES)} (one per product type)")
    rng = random.Random(f"webshop-catalogue-{seed}")
    kinds = [PRODUCT_TYPES[i % len(PRODUCT_TYPES)] for i in range(num_products)]
    rng.shuffle(kinds)
    taken: set[str] = set()
    return Catalogue([_make_product(rng, kind, _asin(rng, taken)) for kind in kinds], seed)
