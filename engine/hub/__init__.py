"""The Hugging Face Hub: search GGUF models, list a repo's quants, read remote headers,
download quants (resumable, verified), and find models other tools already downloaded.

Network access goes through huggingface_hub's client, so ``HF_ENDPOINT``, ``HF_TOKEN``,
``HF_HUB_OFFLINE`` and the standard proxy variables apply.
"""

from engine.hub._http import (
    ChecksumError,
    GatedModelError,
    HubError,
    HubNotFoundError,
    HubOfflineError,
    RetryPolicy,
    hub_endpoint,
    is_offline,
)
from engine.hub.catalog import CatalogRefresh, refresh_catalog
from engine.hub.download import (
    DownloadProgress,
    PendingDownload,
    discard_download,
    download_quant,
    model_dir,
    pending_downloads,
)
from engine.hub.local import (
    ImportResult,
    LocalModel,
    default_roots,
    discover_local_models,
    import_local_models,
    scan_and_import,
)
from engine.hub.quants import (
    Quant,
    RemoteFile,
    group_quants,
    nominal_bpw,
    parse_quant_name,
    select_quant,
)
from engine.hub.remote import (
    HubModel,
    fetch_quant_headers,
    fetch_remote_header,
    find_quant,
    list_quants,
    list_repo_files,
    search_models,
)

__all__ = [
    "CatalogRefresh",
    "ChecksumError",
    "DownloadProgress",
    "GatedModelError",
    "HubError",
    "HubModel",
    "HubNotFoundError",
    "HubOfflineError",
    "ImportResult",
    "LocalModel",
    "PendingDownload",
    "Quant",
    "RemoteFile",
    "RetryPolicy",
    "default_roots",
    "discard_download",
    "discover_local_models",
    "download_quant",
    "fetch_quant_headers",
    "fetch_remote_header",
    "find_quant",
    "group_quants",
    "hub_endpoint",
    "import_local_models",
    "is_offline",
    "list_quants",
    "list_repo_files",
    "model_dir",
    "nominal_bpw",
    "parse_quant_name",
    "pending_downloads",
    "refresh_catalog",
    "scan_and_import",
    "search_models",
    "select_quant",
]
