"""Fixed word lists of the toy world: regions, capitals, cities, people, sports, and a
three-language lexicon of opposites and plurals.

Why fixed tables instead of random strings: the demo's graphs are read by people, and "dallas ->
texas -> austin" is easier to check at a glance than invented syllables. Only the *assignments* that
should vary (which cities are held out, who plays what) are drawn from the seed, in `toyworld.py`.
Every name is a single lowercase word, so the word-level tokenizer gives each entity one token and
each answer is a single next-token prediction. Names are unique across all tables (a test checks),
so a token never means two things.
"""

from __future__ import annotations

# region -> (capital, cities). Real US states and towns; the capital never appears as a city.
REGIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "texas": ("austin", ("dallas", "houston", "plano", "waco", "laredo", "lubbock", "amarillo",
                         "odessa", "abilene", "beaumont")),
    "california": ("sacramento", ("fresno", "oakland", "irvine", "berkeley", "pasadena", "anaheim",
                                  "stockton", "modesto", "oxnard", "burbank")),
    "florida": ("tallahassee", ("miami", "orlando", "tampa", "jacksonville", "naples", "sarasota",
                                "gainesville", "pensacola", "ocala", "clearwater")),
    "ohio": ("columbus", ("cleveland", "cincinnati", "toledo", "akron", "dayton", "canton",
                          "youngstown", "lorain", "sandusky", "mansfield")),
    "illinois": ("springfield", ("chicago", "peoria", "rockford", "aurora", "joliet", "naperville",
                                 "elgin", "evanston", "decatur", "champaign")),
    "michigan": ("lansing", ("detroit", "flint", "kalamazoo", "saginaw", "muskegon", "pontiac",
                             "dearborn", "warren", "livonia", "marquette")),
    "georgia": ("atlanta", ("savannah", "augusta", "macon", "athens", "valdosta", "marietta",
                            "roswell", "dalton", "rome", "brunswick")),
    "washington": ("olympia", ("seattle", "spokane", "tacoma", "bellevue", "everett", "yakima",
                               "kent", "redmond", "renton", "bellingham")),
    "arizona": ("phoenix", ("tucson", "mesa", "tempe", "chandler", "gilbert", "glendale",
                            "scottsdale", "flagstaff", "yuma", "prescott")),
    "pennsylvania": ("harrisburg", ("philadelphia", "pittsburgh", "allentown", "erie", "reading",
                                    "scranton", "lancaster", "bethlehem", "altoona", "york")),
    "colorado": ("denver", ("boulder", "pueblo", "greeley", "longmont", "loveland", "golden",
                            "durango", "vail", "aspen", "lakewood")),
    "oregon": ("salem", ("portland", "eugene", "bend", "medford", "corvallis", "beaverton",
                         "hillsboro", "ashland", "gresham", "astoria")),
    "tennessee": ("nashville", ("memphis", "knoxville", "chattanooga", "clarksville",
                                "murfreesboro", "franklin", "jackson", "kingsport", "cookeville",
                                "smyrna")),
    "massachusetts": ("boston", ("worcester", "cambridge", "lowell", "quincy", "brockton", "lynn",
                                 "newton", "framingham", "pittsfield", "plymouth")),
    "wisconsin": ("madison", ("milwaukee", "kenosha", "racine", "appleton", "waukesha", "oshkosh",
                              "janesville", "sheboygan", "wausau", "superior")),
    "virginia": ("richmond", ("norfolk", "roanoke", "arlington", "alexandria", "lynchburg",
                              "charlottesville", "hampton", "suffolk", "chesapeake", "danville")),
}

PEOPLE: tuple[str, ...] = (
    "alice", "bob", "carol", "david", "emma", "frank", "grace", "henry", "irene", "jack",
    "karen", "leo", "maria", "nathan", "olivia", "peter", "quinn", "rachel", "sam", "tina",
    "victor", "wendy", "xavier", "yara",
)

SPORTS: tuple[str, ...] = ("tennis", "soccer", "hockey", "golf", "baseball", "cricket", "rugby",
                           "volleyball")

LANGUAGES: tuple[str, ...] = ("english", "french", "spanish")

# Each row is one concept pair in (english, french, spanish); accents dropped to stay ASCII.
OPPOSITES: tuple[tuple[tuple[str, str], tuple[str, str], tuple[str, str]], ...] = (
    (("hot", "cold"), ("chaud", "froid"), ("caliente", "frio")),
    (("big", "small"), ("grand", "petit"), ("grande", "pequeno")),
    (("fast", "slow"), ("rapide", "lent"), ("rapido", "lento")),
    (("high", "low"), ("haut", "bas"), ("alto", "bajo")),
    (("good", "bad"), ("bon", "mauvais"), ("bueno", "malo")),
    (("new", "old"), ("nouveau", "vieux"), ("nuevo", "viejo")),
    (("open", "closed"), ("ouvert", "ferme"), ("abierto", "cerrado")),
    (("rich", "poor"), ("riche", "pauvre"), ("rico", "pobre")),
    (("full", "empty"), ("plein", "vide"), ("lleno", "vacio")),
    (("strong", "weak"), ("fort", "faible"), ("fuerte", "debil")),
    (("light", "heavy"), ("leger", "lourd"), ("ligero", "pesado")),
    (("early", "late"), ("tot", "tard"), ("temprano", "tarde")),
    (("hard", "soft"), ("dur", "doux"), ("duro", "blando")),
    (("wet", "dry"), ("mouille", "sec"), ("mojado", "seco")),
    (("clean", "dirty"), ("propre", "sale"), ("limpio", "sucio")),
)

# Each row is one noun as (singular, plural) in (english, french, spanish).
PLURALS: tuple[tuple[tuple[str, str], tuple[str, str], tuple[str, str]], ...] = (
    (("cat", "cats"), ("chat", "chats"), ("gato", "gatos")),
    (("dog", "dogs"), ("chien", "chiens"), ("perro", "perros")),
    (("house", "houses"), ("maison", "maisons"), ("casa", "casas")),
    (("book", "books"), ("livre", "livres"), ("libro", "libros")),
    (("car", "cars"), ("voiture", "voitures"), ("coche", "coches")),
    (("tree", "trees"), ("arbre", "arbres"), ("arbol", "arboles")),
    (("flower", "flowers"), ("fleur", "fleurs"), ("flor", "flores")),
    (("bird", "birds"), ("oiseau", "oiseaux"), ("pajaro", "pajaros")),
    (("door", "doors"), ("porte", "portes"), ("puerta", "puertas")),
    (("key", "keys"), ("cle", "cles"), ("llave", "llaves")),
    (("friend", "friends"), ("ami", "amis"), ("amigo", "amigos")),
    (("apple", "apples"), ("pomme", "pommes"), ("manzana", "manzanas")),
    (("hand", "hands"), ("main", "mains"), ("mano", "manos")),
    (("river", "rivers"), ("riviere", "rivieres"), ("rio", "rios")),
    (("star", "stars"), ("etoile", "etoiles"), ("estrella", "estrellas")),
)

# Sentence frames of each language: (opposite frame, plural frame). "{a}" is the given word and
# "{b}" the answer, always last so the answer is a next-token prediction.
FRAMES: dict[str, tuple[str, str]] = {
    "english": ("the opposite of {a} is {b}", "the plural of {a} is {b}"),
    "french": ("le contraire de {a} est {b}", "le pluriel de {a} est {b}"),
    "spanish": ("lo contrario de {a} es {b}", "el plural de {a} es {b}"),
}

# Filler grammar: plain english sentences that make the model a language model, not a lookup table.
FILLER_SUBJECTS: tuple[str, ...] = ("the dog", "the cat", "a bird", "the old man", "my friend",
                                    "the teacher", "a child", "the farmer", "our neighbour",
                                    "the doctor", "a student", "the baker")
FILLER_VERBS: tuple[str, ...] = ("walked to", "looked at", "ran past", "sat near", "painted",
                                 "found", "visited", "cleaned", "liked", "watched", "opened",
                                 "closed")
FILLER_OBJECTS: tuple[str, ...] = ("the river", "the house", "a tree", "the door", "the garden",
                                   "a book", "the car", "the window", "the market", "the bridge",
                                   "a flower", "the school")
FILLER_TAILS: tuple[str, ...] = ("", "", "in the morning", "after lunch", "yesterday",
                                 "with a smile", "before dark", "every day", "again",
                                 "on sunday")
