// The cnndsl extension: the language (grammar, brackets, comments) comes from package.json; this
// starts the language server, `cnndsl lsp`, over stdio for every .cnn file.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate() {
  const [command, ...args] = vscode.workspace.getConfiguration("cnndsl").get("server.command");
  client = new LanguageClient(
    "cnndsl",
    "cnndsl language server",
    { command, args },
    { documentSelector: [{ scheme: "file", language: "cnndsl" }, { scheme: "untitled", language: "cnndsl" }] },
  );
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
