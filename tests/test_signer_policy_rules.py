"""keycast_tw.signer.policy: the permission catalogue as pure functions."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.signer.model import Permission, Policy
from keycast_tw.signer.policy import check_decrypt, check_encrypt, check_sign

USER = "a" * 64
OTHER = "b" * 64
BLOCKED = "blocked by content_filter policy"


def policy(*permissions: tuple[str, dict[str, Any]]) -> Policy:
    return Policy("p", tuple(Permission(identifier, config) for identifier, config in permissions))


class SignTests(SynchronousTestCase):
    def test_no_policy_allows(self) -> None:
        """A missing policy and an empty policy both allow everything."""
        self.assertIsNone(check_sign(None, 1, "x"))
        self.assertIsNone(check_sign(Policy("empty"), 4, "x"))

    def test_allowed_kinds(self) -> None:
        """allowed_kinds signs only the listed kinds; a missing or null list allows all."""
        p = policy(("allowed_kinds", {"allowed_kinds": [1, 7]}))
        self.assertIsNone(check_sign(p, 7, ""))
        self.assertEqual(check_sign(p, 4, ""), "blocked by allowed_kinds policy")
        self.assertIsNone(check_sign(policy(("allowed_kinds", {})), 4, ""))
        self.assertIsNone(check_sign(policy(("allowed_kinds", {"allowed_kinds": None})), 4, ""))

    def test_content_filter_is_case_insensitive(self) -> None:
        """content_filter blocks a word in any letter case, as a substring."""
        p = policy(("content_filter", {"blocked_words": ["spam"]}))
        self.assertEqual(check_sign(p, 1, "Buy SPAMMY pills"), "blocked by content_filter policy")
        self.assertIsNone(check_sign(p, 1, "hello"))

    def test_content_filter_ignores_empty_words(self) -> None:
        """An empty blocked word does not block every text."""
        self.assertIsNone(check_sign(policy(("content_filter", {"blocked_words": [""]})), 1, "hi"))

    def test_content_filter_checks_tag_values(self) -> None:
        """Tag values are shown by clients (subject, hashtags, alt), so they are checked too;
        tag names and 64-hex ids and pubkeys (where "dead" may occur by chance) are not."""
        p = policy(("content_filter", {"blocked_words": ["spam", "dead"]}))
        for tags in ([["subject", "Buy SPAM"]], [["t", "x"], ["t", "spam"]], [["alt", "dead"]]):
            self.assertEqual(check_sign(p, 1, "hello", tags), BLOCKED, tags)
        hex_id = "dead" + "0" * 60
        self.assertIsNone(check_sign(p, 1, "hello", [["e", hex_id], ["p", hex_id], ["spam"]]))

    def test_content_filter_reads_json_content(self) -> None:
        """JSON content (kind 0 metadata, a kind 6 repost) is also checked as a client shows
        it: decoded, so an escape like \u0073 hides nothing, even beside a lone surrogate or a
        number Python would not parse."""
        p = policy(("content_filter", {"blocked_words": ["spam"]}))
        for kind, content in (
            (0, '{"about":"\\u0073pam"}'),
            (0, '{"name":"\\ud800","about":"\\u0073pam"}'),
            (0, '{"n":' + "1" * 5000 + ',"about":"\\u0073pam"}'),
            (0, '"\\u0073pam"'),
            (6, ' \n{"kind":1,"content":"\\u0073pam","tags":[["t","x"]]}'),
            (1, '["\\u0073pam"]'),
        ):
            self.assertEqual(check_sign(p, kind, content), BLOCKED, content[:40])
        self.assertIsNone(check_sign(p, 0, '{"about":"hello"}'))
        self.assertIsNone(check_sign(p, 1, '"\\u0073pam"'))  # not an object or array: plain text
        self.assertIsNone(check_sign(p, 0, '{"\\u0073pam":"x"}'))  # keys are not shown

    def test_content_filter_refuses_json_too_deep_to_read(self) -> None:
        """JSON nested deeper than the parser goes cannot be checked, so it is refused (fail
        closed) when there are words to look for; text that is not JSON is checked as text."""
        p = policy(("content_filter", {"blocked_words": ["spam"]}))
        deep = "[" * 100_000 + "]" * 100_000
        self.assertEqual(check_sign(p, 0, deep), BLOCKED)
        self.assertIsNone(check_sign(policy(("content_filter", {"blocked_words": []})), 0, deep))
        self.assertIsNone(check_sign(p, 0, '{"about":"\\u0073pam"'))  # no client can read it

    def test_content_filter_normalises_text(self) -> None:
        """Invisible characters, compatibility forms and case do not hide a word, in events and
        in plaintexts to encrypt; blocked words are normalised the same way."""
        p = policy(("content_filter", {"blocked_words": ["spam", "ｆｉｌｅ"]}))
        for text in (
            "sp\u00adam",  # soft hyphen
            "s\u200bpam",  # zero-width space
            "S\u2060P\u200dA\ufe0fM",  # word joiner, zero-width joiner, variation selector
            "sp\U000e0041am",  # tag character
            "ＳＰＡＭ",  # full-width
            "\ufb01le",  # "fi" ligature
            "spa\u034fm",  # combining grapheme joiner
        ):
            self.assertEqual(check_sign(p, 1, f"buy {text} now"), BLOCKED, ascii(text))
            self.assertEqual(check_sign(p, 1, "x", [["t", text]]), BLOCKED, ascii(text))
            self.assertEqual(check_encrypt(p, text, USER, OTHER), BLOCKED, ascii(text))
        self.assertIsNone(check_sign(p, 1, "spa m, sp-am, fil e"))

    def test_content_filter_ignores_invisible_words(self) -> None:
        """A word that normalises to nothing (a lone soft hyphen) blocks nothing, like ""."""
        p = policy(("content_filter", {"blocked_words": ["\u00ad", "\u200b"]}))
        self.assertIsNone(check_sign(p, 1, "hello\u00ad\u200b"))

    def test_decrypt_only_signs_relay_auth_only(self) -> None:
        """decrypt_only signs kind 22242 (NIP-42 AUTH) and nothing else."""
        p = policy(("decrypt_only", {}))
        self.assertIsNone(check_sign(p, 22242, ""))
        self.assertEqual(check_sign(p, 1, ""), "blocked by decrypt_only policy")

    def test_full_access_and_encrypt_to_self_allow_signing(self) -> None:
        """full_access and encrypt_to_self do not restrict signing."""
        self.assertIsNone(check_sign(policy(("full_access", {}), ("encrypt_to_self", {})), 3, ""))

    def test_and_combination(self) -> None:
        """Every permission must allow: the first denial wins."""
        p = policy(
            ("allowed_kinds", {"allowed_kinds": [1]}),
            ("content_filter", {"blocked_words": ["bad"]}),
        )
        self.assertIsNone(check_sign(p, 1, "good"))
        self.assertEqual(check_sign(p, 1, "bad"), "blocked by content_filter policy")
        self.assertEqual(check_sign(p, 2, "good"), "blocked by allowed_kinds policy")

    def test_unknown_permission_denies(self) -> None:
        """An identifier we do not know denies (fail closed) with a clear reason."""
        p = policy(("full_access", {}), ("sign_anything", {}))
        reason = check_sign(p, 1, "")
        self.assertEqual(reason, "blocked by sign_anything policy (unknown permission)")
        self.assertIsNotNone(check_encrypt(p, "x", USER, USER))
        self.assertIsNotNone(check_decrypt(p, USER, USER))

    def test_invalid_configuration_denies(self) -> None:
        """A malformed configuration denies rather than being read as "allow all"."""
        for bad in ({"allowed_kinds": "1"}, {"allowed_kinds": [True]}, {"allowed_kinds": ["1"]}):
            reason = check_sign(policy(("allowed_kinds", bad)), 1, "")
            self.assertEqual(reason, "blocked by allowed_kinds policy (invalid configuration)")
        for bad_words in ({"blocked_words": "spam"}, {"blocked_words": [1]}):
            p = policy(("content_filter", bad_words))
            self.assertIsNotNone(check_sign(p, 1, ""))
            self.assertIsNotNone(check_encrypt(p, "x", USER, OTHER))
            self.assertIsNotNone(check_decrypt(p, USER, OTHER))
        not_a_mapping = Policy("p", (Permission("allowed_kinds", [1]),))  # type: ignore[arg-type]
        self.assertIsNotNone(check_sign(not_a_mapping, 1, ""))


class EncryptDecryptTests(SynchronousTestCase):
    def test_encrypt_to_self_compares_with_the_user(self) -> None:
        """encrypt_to_self allows only the user's own pubkey as third party (any hex case)."""
        p = policy(("encrypt_to_self", {}))
        self.assertIsNone(check_encrypt(p, "x", USER, USER.upper()))
        self.assertEqual(check_encrypt(p, "x", USER, OTHER), "blocked by encrypt_to_self policy")
        self.assertIsNone(check_decrypt(p, USER, USER))
        self.assertEqual(check_decrypt(p, USER, OTHER), "blocked by encrypt_to_self policy")

    def test_decrypt_only(self) -> None:
        """decrypt_only refuses every encryption and allows decryption."""
        p = policy(("decrypt_only", {}))
        self.assertEqual(check_encrypt(p, "x", USER, USER), "blocked by decrypt_only policy")
        self.assertIsNone(check_decrypt(p, USER, OTHER))

    def test_content_filter_guards_encrypt_only(self) -> None:
        """content_filter checks the plaintext to encrypt; decryption is not filtered."""
        p = policy(("content_filter", {"blocked_words": ["Secret"]}))
        self.assertEqual(
            check_encrypt(p, "my secret plan", USER, OTHER), "blocked by content_filter policy"
        )
        self.assertIsNone(check_encrypt(p, "hello", USER, OTHER))
        self.assertIsNone(check_decrypt(p, USER, OTHER))

    def test_allowed_kinds_does_not_restrict_encryption(self) -> None:
        """allowed_kinds only concerns signing."""
        p = policy(("allowed_kinds", {"allowed_kinds": [1]}), ("full_access", {}))
        self.assertIsNone(check_encrypt(p, "x", USER, OTHER))
        self.assertIsNone(check_decrypt(p, USER, OTHER))
