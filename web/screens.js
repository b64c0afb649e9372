// Helpers shared by the reference screens (/display, /staff, /p/{id}).

export function byId(id) {
  return document.getElementById(id);
}

export function setText(id, text) {
  byId(id).textContent = text;
}

export function show(id, visible) {
  byId(id).classList.toggle("hidden", !visible);
}

/** The page's query parameters (URLSearchParams). */
export function params() {
  return new URLSearchParams(location.search);
}

/** "14:05" in the browser's locale. */
export function clockText(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** What to tell the person in front of the screen about a client error. */
export function describeError(error, page) {
  switch (error.code) {
    case "expired_token":
      return page === "patient"
        ? "This link has expired. Please ask the reception for a new one."
        : "The access token has expired. Mint a new one (smartwait-gateway token) and enter it.";
    case "invalid_token":
      return page === "patient"
        ? "This link is not valid. Please ask the reception for a new one."
        : "The access token was refused (malformed, or signed with another secret).";
    case "token_mismatch":
      return "That token is for another role or patient; this screen keeps its current one. Enter a staff token.";
    case "unauthorized":
      return page === "display"
        ? "This display needs a token: add ?token=… to the address (smartwait-gateway token --role display)."
        : "An access token is needed.";
    case "forbidden":
      if (page === "staff") return "This token is not a staff token. Enter a token minted with --role staff.";
      if (page === "patient") return "This link belongs to another patient. Please ask the reception for your own link.";
      return "This token may not show the waiting-room display.";
    default:
      return error.message || "Something went wrong (" + error.code + ").";
  }
}
