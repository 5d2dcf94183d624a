"""LLaVA's instruction pools and prompt strings, shared by datagen (the questions it asks), the mix (how it
recognizes sources), eval (the benchmark prompts) and the toy world (the data it mimics)."""

# The paper's 11 "brief description" instructions, used as LCS-558K pretraining prompts.
BRIEF_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)

# The pool seen in the released detail_23k.json, not the paper's 16.
DETAIL_INSTRUCTIONS: tuple[str, ...] = (
    "What do you see happening in this image?",
    "What do you think is going on in this snapshot?",
    "Can you elaborate on the elements of the picture provided?",
    "Describe the following image.",
    "Write a detailed description of the given image.",
    "Explain the visual content of the image in great detail.",
    "Analyze the image in a comprehensive and detailed manner.",
    "Can you describe the main features of this image for me?",
    "What are the key elements in this picture?",
    "What is this photo about?",
)

# Response-format suffixes LLaVA-1.5 appends to a question, in its training mix and in its eval prompts alike;
# the mix stage recognizes sources by them (conf/mix/sources/ spells them out, and a test holds it to these).
SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."

# Task prompts of the mix's TextCaps and region (RefCOCO / Visual Genome) records; a region prompt is followed
# by a box or a referring expression.
TEXTCAPS_PROMPT = "Provide a one-sentence caption for the provided image."
REGION_DESCRIPTION_PROMPT = "Please provide a short description for this region: "
REGION_BOX_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: "
