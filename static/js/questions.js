// Question objectives: the learner answers on the page and the server judges the answer. The form
// is built once per question and only updated afterwards, so live updates of the other objectives
// never wipe a half-typed answer or a picked choice.

import { el, say, withCode } from "./util.js";

export function createQuestion(ctx, objective, onAnswered) {
  const { key } = objective;
  const { prompt, choices } = objective.question;
  const form = el("form", "question");
  form.dataset.question = key;
  form.append(el("p", "prompt", prompt));
  const inputs = [];
  if (choices.length) {
    const group = el("div", "choices");
    choices.forEach((choice) => {
      const label = el("label", "choice");
      const radio = el("input");
      radio.type = "radio";
      radio.name = `answer-${key}`;
      radio.value = choice;
      label.append(radio, el("span", "", choice));
      group.append(label);
      inputs.push(radio);
    });
    form.append(group);
  } else {
    const text = el("input");
    text.type = "text";
    text.name = `answer-${key}`;
    text.maxLength = 500;
    text.placeholder = "Your answer";
    text.setAttribute("aria-label", prompt);
    form.append(text);
    inputs.push(text);
  }
  const submit = el("button", "", "Answer");
  submit.type = "submit";
  const status = el("span", "inline-status");
  status.setAttribute("role", "status");
  const row = el("div", "question-actions");
  row.append(submit, status);
  const explanation = el("p", "explanation");
  explanation.hidden = true;
  form.append(row, explanation);

  let busy = false;
  let current = objective;

  function given() {
    if (!choices.length) return inputs[0].value.trim();
    const picked = inputs.find((radio) => radio.checked);
    return picked ? picked.value : "";
  }

  function update(next = current) {
    current = next;
    const answered = current.status === "met";
    const open = ctx.labState === "ready" && !answered;
    inputs.forEach((input) => {
      input.disabled = !open || busy;
    });
    submit.disabled = !open || busy;
    submit.hidden = answered;
    const text = current.question.explanation;
    explanation.hidden = !text;
    explanation.replaceChildren(...(text ? withCode(text) : []));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = given();
    if (!answer) {
      say(status, choices.length ? "Pick an answer first." : "Type an answer first.");
      return;
    }
    busy = true;
    update();
    say(status, "");
    try {
      onAnswered(await ctx.post(ctx.url(`objectives/${key}/answer`), { answer }));
    } catch (error) {
      say(status, error.message);
    } finally {
      busy = false;
      update();
    }
  });

  update();
  return { element: form, update };
}
