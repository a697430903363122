"""Why a watchlist bundle is refused: one exception class per failure, all BundleError.

Exit codes (the CLI returns them): 65 the file is damaged, malformed, over a limit or built
for another model; 75 not valid yet (try again later, or fix the unit's clock); 77 refused
by the trust policy (signature, issuer key, addressee, expiry, rollback).
"""
from __future__ import annotations

from edge.errors import WatchlistError

__all__ = [
    "BundleError", "BundleFormatError", "BundleLimitError", "BundleDecryptError", "BundleIntegrityError",
    "BundleSignatureError", "BundleUntrustedIssuerError", "BundleNotForThisUnitError", "BundleRollbackError",
    "BundleExpiredError", "BundleNotYetValidError", "BundleModelMismatchError",
]


class BundleError(WatchlistError):
    """A watchlist bundle that is refused; the message names the problem."""

    exit_code = 65  # EX_DATAERR


class BundleFormatError(BundleError):
    """Not a bundle, truncated, or a structure/type that the format does not allow."""


class BundleLimitError(BundleError):
    """A size or count over a hard limit (file size, entries, decompressed size, ratio)."""


class BundleDecryptError(BundleError):
    """Authenticated decryption failed: the file was altered or damaged."""


class BundleIntegrityError(BundleError):
    """An archive member whose size or sha256 differs from the signed manifest, or is missing."""


class BundleModelMismatchError(BundleError):
    """Built with a different embedding model than the one this unit runs."""


class BundleNotYetValidError(BundleError):
    """The validity window (or the signing key's) has not started by this unit's clock."""

    exit_code = 75  # EX_TEMPFAIL


class BundleSignatureError(BundleError):
    """The issuer's signature over the manifest does not verify."""

    exit_code = 77  # EX_NOPERM


class BundleUntrustedIssuerError(BundleSignatureError):
    """Signed by a key that is not in the trust file, is revoked, or is outside its window."""


class BundleNotForThisUnitError(BundleError):
    """Addressed (encrypted and signed) to other units."""

    exit_code = 77


class BundleRollbackError(BundleError):
    """A serial lower than (or reusing) the last accepted one: an old list replayed."""

    exit_code = 77


class BundleExpiredError(BundleError):
    """The validity window has ended."""

    exit_code = 77
