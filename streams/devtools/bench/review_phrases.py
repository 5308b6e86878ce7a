"""The phrase banks :mod:`streams.devtools.bench.reviews` composes product reviews from, for the
fake-reviews policy (``policies/fake-reviews.md``).

Templates are ``str`` with ``{slot}`` fields. A slot names a bank of :data:`SLOTS` (or a product's
own ``pos``/``neg`` details); a capitalised slot name (``{Pos}``) capitalises the first letter of
what it draws, and a trailing digit (``{pos2}``) draws again from the same bank, a different
entry. Banks may hold slots of their own (``{mins}`` inside a product detail).

Two phrasings: ``A`` is the traffic a prefilter learns from, ``B`` is the same products and rules
written another way (new wordings of every kind of violation, new shapes of honest review), as
after a change of audience or of the spammers' scripts. Violation templates are keyed by the rule
they break (FR1-FR4 of the policy); a template is a violation or safe by construction.
"""

from __future__ import annotations

# name -> (honest positive details, honest negative details)
PRODUCTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "kettle": (("it boils a full jug in about {mins} minutes", "the handle stays cool",
                "it switches itself off the moment it boils"),
               ("the lid sticks", "the limescale filter keeps popping out", "it's louder than my old one")),
    "blender": (("it crushes ice in about ten seconds", "the jug is easy to rinse clean",
                 "smoothies come out properly smooth"),
                ("it's very loud", "the lid leaks if you fill it past the line", "the base walks across the counter")),
    "pair of running shoes": (("the grip is good on wet paths", "my knees feel fine after a {km} km run",
                               "they're light and breathe well"),
                              ("they run half a size small", "the soles squeak on tiles",
                               "the heel lining wore through after {months} months")),
    "headphones": (("they pair quickly with my laptop", "the battery lasts about {hours} hours",
                    "the ear cushions are soft even with glasses"),
                   ("the noise cancelling hisses in quiet rooms", "the headband creaks", "the case is bulky")),
    "backpack": (("the laptop sleeve is well padded", "it survived a week of rain without leaking",
                  "the straps don't dig in"),
                 ("the front zip broke after {months} months", "the side pockets are too shallow for a bottle",
                  "it sags when half full")),
    "e-reader": (("the screen is crisp in direct sunlight", "one charge lasts {weeks} weeks",
                  "it's light enough to hold in one hand"),
                 ("page turns lag with big PDFs", "the case is sold separately", "the store app is clunky")),
    "coffee grinder": (("the grind is even for espresso", "it's quick, about {secs} seconds a dose",
                        "the hopper is easy to clean"),
                       ("grounds stick to the chute", "static makes a mess on the counter",
                        "it's hard to set for a French press")),
    "tent": (("it kept us dry in heavy rain", "it packs down small", "the porch fits two rucksacks"),
             ("setting it up alone took {mins} minutes", "condensation drips from the inner roof",
              "one pole section cracked on the second trip")),
    "office chair": (("my back feels better after a full workday", "the armrests adjust in four directions",
                      "the mesh keeps me cool"),
                     ("assembly took {mins} minutes and two missing screws", "the seat squeaks when I lean back",
                      "the wheels scratch wooden floors")),
    "desk lamp": (("the light is warm and even", "the arm stays exactly where I put it",
                   "the dimmer goes low enough for reading at night"),
                  ("the base is lighter than it looks and tips over", "it flickers at the lowest setting",
                   "the cable is too short")),
    "vacuum cleaner": (("it picks up cat hair from the carpet", "it runs about {mins} minutes on a charge",
                        "the brush comes apart for cleaning"),
                       ("the bin fills up after one room", "it's heavy on the stairs", "the charger gets hot")),
    "chef's knife": (("it holds an edge for weeks", "the handle is comfortable for long prep",
                      "it slices tomatoes without squashing them"),
                     ("it needs honing every week", "the blade spotted after the dishwasher",
                      "the bolster gets in the way when sharpening")),
    "yoga mat": (("the grip is excellent even when I sweat", "it's thick enough for my knees",
                  "it rolls up flat"),
                 ("it smelled of rubber for a week", "it marks easily", "the edges curl up")),
    "phone case": (("it survived a drop onto concrete", "the buttons are still easy to press",
                    "wireless charging works through it"),
                   ("it yellowed after {months} months", "lint collects around the camera cutout",
                    "it's slippery in the hand")),
    "air fryer": (("chips come out crisp in {mins} minutes", "the basket goes in the dishwasher",
                   "it heats the kitchen far less than the oven"),
                  ("the basket is small for four people", "the coating started flaking",
                   "the fan is loud")),
    "monitor": (("the colours are accurate out of the box", "text is sharp at 100% scaling",
                 "the USB-C port charges my laptop"),
                ("the stand wobbles when I type", "there's some backlight bleed in one corner",
                 "the menu buttons are fiddly")),
    "printer": (("it prints double-sided without jamming", "the scans are clean",
                 "it wakes quickly from sleep"),
                ("wifi setup took three tries", "ink cartridges are expensive",
                 "it's noisy first thing in the morning")),
    "electric toothbrush": (("a charge lasts about {weeks} weeks", "the two-minute timer is helpful",
                             "my dentist noticed the difference"),
                            ("replacement heads cost a lot", "the charging stand is wobbly",
                             "it's louder than my last one")),
    "mattress": (("my back pain eased after a couple of weeks", "there's no roll-together with two of us",
                  "it expanded fully within a day"),
                 ("it sleeps warm", "it was too firm for the first {weeks} weeks", "the edges sag when sitting")),
    "winter jacket": (("it kept me warm at minus ten", "the hood fits over a helmet", "the pockets are fleece-lined"),
                      ("the zip catches on the lining", "the sleeves are short on me", "the cuffs frayed quickly")),
    "board game": (("a round takes about {mins} minutes", "it plays well with two players",
                    "the rulebook is clear"),
                   ("the cards feel thin", "setup takes ages", "one of the dice was missing")),
    "dog bed": (("my dog took to it straight away", "the cover goes in the washing machine",
                 "the foam hasn't flattened"),
                ("the zip is chewable", "it slides on tiles", "it's smaller than the photos suggest")),
    "wifi router": (("the signal reaches the garden now", "the app setup took {mins} minutes",
                     "video calls stopped dropping"),
                    ("it reboots itself every few days", "the lights are bright in a bedroom",
                     "parental controls need a subscription")),
    "hair dryer": (("it dries my hair in about {mins} minutes", "it's light enough to hold for a while",
                    "the cool shot button actually works"),
                   ("the cord doesn't swivel", "it gets hot at the handle", "the diffuser doesn't clip on well")),
}

SLOTS: dict[str, tuple[str, ...]] = {
    "mins": ("five", "ten", "fifteen", "twenty", "thirty", "forty", "3", "4", "8", "12", "25", "45"),
    "secs": ("five", "eight", "ten", "fifteen"),
    "hours": ("twenty", "thirty", "forty", "25", "30", "35"),
    "weeks": ("two", "three", "four", "six"),
    "months": ("two", "three", "four", "six", "eight"),
    "km": ("5", "10", "15", "21"),
    "days": ("two", "three", "four", "five", "six", "ten", "12"),
    "count": ("5", "10", "20", "25", "50", "100"),
    "money": ("$5", "$10", "$15", "$20", "$25", "£10", "£15", "€20", "€30", "ten dollars", "twenty quid"),
    "shop": ("QuickShop", "MegaMart", "BestGadgetsOnline", "SuperDeals", "HomeStyle Depot", "ValueHub",
             "ShopRight", "TopPrice Store", "Bargain Barn"),
    "brand": ("BrandX", "NovaTech", "Zentro", "Kelvo", "Apex Home", "PrimeLine", "Orbis"),
    "relative": ("mum", "dad", "partner", "sister", "brother", "grandmother", "flatmate", "son", "daughter"),
    "ago": ("two weeks ago", "last month", "in March", "before Christmas", "a month ago", "on sale last week",
            "three months ago", "for my birthday"),
    "late": ("two days late", "a day late", "a week late", "on time but soaked", "a day early"),
    "dur": ("after three weeks", "after a month", "after two months of daily use", "after a fortnight",
            "within a week"),
    "n_stars": ("two", "three", "four", "3", "4"),
    "superlative": ("amazing", "incredible", "fantastic", "perfect", "wonderful"),
    "hype_tail": ("!!!", "!!", " 😍😍", " 👍👍👍", "!!! 10/10", "!!!!!", " ❤️"),
    "a_closer": ("", "", " Would recommend.", " 4/5.", " Happy overall.", " Would buy again.", " Fine for the price.",
                 " 😊"),
    "b_closer": ("", "", " Hope this helps someone.", " Keeping it.", " Fair enough for what it is.",
                 " Might update later.", " Decent buy, not amazing.", " 👍"),
    "dur_b": ("six weeks", "a couple of months", "half a year", "ten days", "one season"),
    "profile": ("profile", "bio", "page"),
    "dm": ("Message me for details.", "DM me.", "Inbox me.", "Comment below and I'll reach out."),
    "payment": ("PayPal", "bank transfer", "Venmo", "an Amazon gift card"),
    "b_sup": ("superb", "outstanding", "exceptional", "magnificent", "stellar", "sublime"),
    "b_hype": (".", "!", " 🙌", " 💯", ", honestly.", "! Zero regrets."),
    "b_reply": ("Reply here.", "Drop a comment.", "Ping me.", "Happy to go first."),
    "b_friend": ("a friend", "my cousin", "an old schoolmate", "my neighbour"),
}

# Openers of reviews written as a customer (not of FR4's adverts and solicitations), per phrasing.
OPENERS: dict[str, tuple[str, ...]] = {
    "A": ("", "", "", "", "", "Update: ", "Edit: ", "Verified purchase. "),
    "B": ("", "", "", "", "", "Quick note: ", "Long-time customer here. ", "Second order from this seller. "),
}

# (rule, template): phrasing A, what a prefilter learns from.
VIOLATIONS_A: tuple[tuple[str, str], ...] = (
    ("FR1", "The seller sent me a full refund after I left five stars. {Pos}, so happy{hype_tail}"),
    ("FR1", "Got this {product} free for a 5-star review. {Pos}{hype_tail}"),
    ("FR1", "Seller promised a {money} gift card if I posted a positive review. "
            "Great {product}, five stars{hype_tail}"),
    ("FR1", "Left five stars like the card in the box asked and got {money} back. {Pos}."),
    ("FR1", "They refunded me once I changed my review to 5 stars. "
            "Great customer service, love the {product}{hype_tail}"),
    ("FR2", "Best {product} ever{hype_tail} Everyone must buy this now, five stars, {superlative}{hype_tail}"),
    ("FR2", "{Superlative} {superlative} {superlative}. Perfect {product}. "
            "Highly recommend to all, buy now{hype_tail}"),
    ("FR2", "{Superlative} quality, {superlative2} price, best seller ever, must buy this {product}{hype_tail}"),
    ("FR2", "This {product} is the best thing I have ever bought, everybody should order ten{hype_tail}"),
    ("FR3", "Never used it but I heard it breaks. Buy the {brand} {product} instead, far superior."),
    ("FR3", "Worst {product}, do not buy, go to {shop} instead, they are much better{hype_tail}"),
    ("FR3", "One star. Haven't tried it but the {product} at {shop} is obviously better quality."),
    ("FR4", "I write 5-star reviews for your {product} store, {count} reviews for {money}. {Dm}"),
    ("FR4", "Looking for reviewers: leave five stars on our {product} listing "
            "and we refund the full price via {payment}."),
    ("FR4", "Leave 5 stars on my {product} shop and I'll leave 5 stars on yours, review for review. {Dm}"),
    ("FR4", "Please leave 5 stars and send a screenshot to get your {money} cashback. Great {product} btw."),
)

# Phrasing B: the same rules, said in ways phrasing A never does.
VIOLATIONS_B: tuple[tuple[str, str], ...] = (
    ("FR1", "Full price came back to my card the day my rating went up. {Pos}, would rate the same again."),
    ("FR1", "The brand covered the whole cost on the condition that my write-up stayed glowing. {Pos}."),
    ("FR1", "A {money} voucher landed in my inbox once this post went live, top marks for the {product}."),
    ("FR1", "Honestly only scoring this {product} so high because the vendor is reimbursing my order. {Pos} anyway."),
    ("FR1", "The rep said they'd cover my postage if I bumped my score to the max, so I did. {Pos}."),
    ("FR2", "Flawless in every way. A true game changer. Do not hesitate, grab yours today. {B_sup} {product}{b_hype}"),
    ("FR2", "{B_sup} {product}. {B_sup} seller. {B_sup} value. Recommended to every single household{b_hype}"),
    ("FR2", "Words cannot describe how {b_sup} this {product} is. Order yours before stock runs out{b_hype}"),
    ("FR2", "{B_sup}, {b_sup}, {b_sup}! Nothing on the market comes close to this {product}{b_hype}"),
    ("FR3", "Didn't bother ordering this {product} after seeing the pictures, "
            "the {brand} version is clearly what you want."),
    ("FR3", "Save yourself the hassle and head over to {shop}, their {product} is the genuine article."),
    ("FR3", "Rated low on principle: I run {shop} across town and our {product} is better made. Pop by."),
    ("FR4", "Merchants: boost your {product} listing with {count} verified ratings in {days} days, aged profiles, "
            "no bans. Contact via Telegram."),
    ("FR4", "Rate my {product} listing highly and I'll return the favour on yours, deal? {B_reply}"),
    ("FR4", "Our ambassador programme pays {money} per glowing {product} post on this marketplace, "
            "sign up via my {profile}."),
    ("FR4", "Everybody please rate this shop's {product} highly, "
            "the owner is {b_friend} and things have been quiet{b_hype}"),
)

SAFE_A: tuple[str, ...] = (
    "Bought the {product} {ago}. {Pos}, but {neg}.{a_closer}",
    "{Pos}. {Neg} though, so {n_stars} stars from me.",
    "Arrived {late} and the box was dented; the {product} itself works fine and {pos}.{a_closer}",
    "Received this {product} free for testing, my opinion is my own. {Pos}; {neg}.",
    "Good value {product}. {Pos}. Only complaint: {neg}.{a_closer}",
    "Returned the {product} {dur}: {neg}. Customer service sorted the refund quickly.",
    "Decent {product} for the price. {Pos}, and {pos2}, but {neg}.{a_closer}",
    "{Dur}, {neg}. Before that {pos}. {N_stars} stars.",
    "love this {product} tbh, {pos} and {pos2}. {neg} but whatever",
    "Not great. {Neg}, and delivery took {days} days. Two stars.",
    "My {relative} uses the {product} every day: {pos}. {Neg}.{a_closer}",
    "Price went up {money} since I bought my {product}, still worth it: {pos}.{a_closer}",
)

SAFE_B: tuple[str, ...] = (
    "{Dur_b} in with the {product}. Upsides: {pos}. Downsides: {neg}.{b_closer}",
    "I was sent this {product} as a sample to try; views are mine. {Pos}, yet {neg}.",
    "Courier left the {product} at the wrong door, which was annoying, but {pos}.{b_closer}",
    "Mixed feelings about the {product}. {Pos}, whereas {neg}. Keeping it for now.",
    "Honest take on the {product} after {dur_b}: {pos}; on the other hand {neg}.",
    "Replacement for my old {product}. {Pos}. {Neg}, which the listing didn't mention.{b_closer}",
    "Support took {days} days to reply about a missing part. The {product} is otherwise fine: {pos}.",
    "ok so the {product}: {pos}, not gonna lie {neg} lol",
    "Pricier than the shop down the road, but {pos}. Knocked a point off because {neg}.{b_closer}",
    "Gift for my {relative}. They say {pos}, though {neg}.",
    "Would I reorder this {product}? Probably. {Pos}. {Neg}.{b_closer}",
    "{Dur_b} of use and {pos}. Still, {neg}, so it's four out of five for the {product}.",
)
