import pytest

from srmir.errors import UserError
from srmir.taxonomy import load_taxonomy

SLUGS = ["insult", "unfairness_discrimination", "crimes_illegal", "physical_harm", "mental_health",
         "privacy_property", "ethics_morality"]


def test_default_taxonomy_has_the_seven_scenarios():
    tax = load_taxonomy()
    assert tax.slugs == SLUGS and len(tax) == 7
    for cat in tax:
        assert cat.description.endswith(".") and cat.principle.endswith(".")
    assert tax.index("mental_health") == 4
    assert "insult" in tax and "spam" not in tax


def test_replacement_taxonomy(tmp_path):
    p = tmp_path / "tax.yaml"
    p.write_text("categories:\n  - {slug: spam, description: Spam., principle: Do not spam.}\n"
                 "  - {slug: fraud, description: Fraud., principle: Do not defraud.}\n")
    tax = load_taxonomy(p)
    assert tax.slugs == ["spam", "fraud"] and len(tax) == 2
    with pytest.raises(UserError, match="unknown category 'insult'"):
        tax.index("insult")


@pytest.mark.parametrize("text, message", [
    ("categories: []\n", "non-empty"),
    ("categories:\n  - {slug: a, description: x}\n", "principle"),
    ("categories:\n  - {slug: Bad-Slug, description: x, principle: y}\n", "lower-case"),
    ("categories:\n  - {slug: a, description: x, principle: y}\n  - {slug: a, description: x, principle: y}\n",
     "duplicate"),
    ("categories: [\n", "YAML"),
])
def test_bad_taxonomy_files(tmp_path, text, message):
    p = tmp_path / "tax.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match=message) as e:
        load_taxonomy(p)
    assert "tax.yaml" in str(e.value)


def test_reserved_slugs_are_refused(tmp_path):
    import json

    from srmir.errors import UserError
    from srmir.taxonomy import load_taxonomy

    for slug in ("benign", "helpfulness"):
        path = tmp_path / f"{slug}.yaml"
        path.write_text(json.dumps({"categories": [{"slug": slug, "description": "d", "principle": "p"}]}))
        with pytest.raises(UserError, match="reserved"):
            load_taxonomy(path)
