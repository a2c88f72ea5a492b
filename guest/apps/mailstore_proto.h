// Mail-store wire protocol, shared by the guest app and the host client (`ftvm mail`).
//
// One UDP datagram per request and per reply, plain ASCII header line so a person
// can read a capture. Every request starts with a client-chosen request id that the
// reply echoes, so a retrying client can match replies to requests; DELIVER carries a
// message id that makes retries idempotent (the store answers DUP for a stored id).
//
//   <reqid> PING                                -> <reqid> PONG
//   <reqid> DELIVER <msgid> <mailbox>\n<body>   -> <reqid> OK <msgid> | <reqid> DUP <msgid>
//   <reqid> FETCH <mailbox> <index>             -> <reqid> MSG <msgid>\n<body> | <reqid> NONE
//   <reqid> COUNT <mailbox>                     -> <reqid> COUNT <n>
//   anything malformed                          -> <reqid> ERR <reason>   (reqid "-" if unreadable)
//
// OK is sent only after the message is durable on the virtio disk (journal write +
// flush completed). Indexes in FETCH count from 0 in delivery order.
#ifndef FTVM_GUEST_APPS_MAILSTORE_PROTO_H_
#define FTVM_GUEST_APPS_MAILSTORE_PROTO_H_

#define FTVM_MAIL_PORT          2525u
#define FTVM_MAIL_MAX_REQID     16u
#define FTVM_MAIL_MAX_MSGID     64u
#define FTVM_MAIL_MAX_MAILBOX   32u
#define FTVM_MAIL_MAX_BODY      1024u
#define FTVM_MAIL_MAX_DATAGRAM  1400u

// ---- Added (compatible) definitions -------------------------------------------
// Reasons sent after ERR. A token with no spaces, so clients can match on it.
#define FTVM_MAIL_ERR_EMPTY            "empty"            // no header words at all
#define FTVM_MAIL_ERR_BAD_REQID        "bad-reqid"        // reply reqid is "-"
#define FTVM_MAIL_ERR_TOO_LONG         "too-long"         // datagram > FTVM_MAIL_MAX_DATAGRAM
#define FTVM_MAIL_ERR_UNKNOWN_COMMAND  "unknown-command"
#define FTVM_MAIL_ERR_BAD_ARGS         "bad-args"         // wrong word count / bad number
#define FTVM_MAIL_ERR_BAD_MSGID        "bad-msgid"        // empty, > MAX_MSGID, non-printable
#define FTVM_MAIL_ERR_BAD_MAILBOX      "bad-mailbox"      // empty, > MAX_MAILBOX, non-printable
#define FTVM_MAIL_ERR_BODY_TOO_LONG    "body-too-long"    // body > FTVM_MAIL_MAX_BODY
#define FTVM_MAIL_ERR_FULL             "full"             // journal disk or index full
// Tokens (reqid, msgid, mailbox) are printable ASCII without spaces (0x21..0x7e).
// A DELIVER without a '\n' has an empty body.

// The token rule, shared by the store's parser and the host client's checks.
static inline int ftvm_mail_token_char(unsigned char c) { return c > 0x20 && c < 0x7f; }

#endif  // FTVM_GUEST_APPS_MAILSTORE_PROTO_H_
